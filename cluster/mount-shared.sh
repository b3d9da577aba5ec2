#!/usr/bin/env bash
# Mounts the cluster's shared storage on a node, once: an NFS export (EFS on AWS, Filestore on Google
# Cloud, any NFS server on premises) at PRIME_RAY_SHARED_DIR (default /mnt/prime-ray), the same path on
# every node. Job artifacts live in its artifacts/ folder: the job driver writes them, Ray Train's
# workers write checkpoints into them from other nodes, and the gateway serves them.
#
#   bash cluster/mount-shared.sh SERVER:/EXPORT
set -euo pipefail

source=${1:?usage: mount-shared.sh SERVER:/EXPORT}
mount_point=${PRIME_RAY_SHARED_DIR:-/mnt/prime-ray}

if ! mountpoint -q "$mount_point"; then
  command -v mount.nfs >/dev/null 2>&1 || { sudo apt-get update -q && sudo apt-get install -y -q nfs-common; }
  sudo mkdir -p "$mount_point"
  sudo mount -t nfs -o hard,timeo=600,retrans=2,noresvport "$source" "$mount_point"
fi
sudo mkdir -p "$mount_point/artifacts"
sudo chown "$(id -u):$(id -g)" "$mount_point/artifacts"

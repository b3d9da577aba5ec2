// Live updates of a job page: progress from the job's server-sent events, the log tail on demand.
(function () {
  "use strict";
  const live = document.getElementById("live");
  const log = document.getElementById("log");
  if (log) {
    fetch(log.dataset.src, { credentials: "same-origin" })
      .then((r) => r.text())
      .then((text) => { log.textContent = text || "(no log yet)"; log.scrollTop = log.scrollHeight; })
      .catch(() => { log.textContent = "(the log cannot be read now)"; });
  }
  if (!live || live.dataset.terminal === "true" || !window.EventSource) return;
  const source = new EventSource(`/jobs/${live.dataset.job}/stream?cursor=${live.dataset.cursor}`);
  const structural = ["stage_started", "stage_finished", "stage_skipped", "stage_failed",
                      "job_finished", "job_failed", "job_cancelled"];
  source.addEventListener("progress", (message) => {
    const event = JSON.parse(message.data);
    const row = live.querySelector(`tr[data-stage="${CSS.escape(event.stage || "")}"]`);
    if (!row) return;
    if (event.total) row.querySelector("progress").value = Math.round((100 * event.done) / event.total);
    row.querySelector(".done").textContent = event.total ? `${event.done} / ${event.total}` : `${event.done}`;
    const metrics = row.querySelector(".metrics");
    metrics.replaceChildren(...Object.entries(event.metrics || {}).map(([k, v]) => {
      const span = document.createElement("span");
      span.textContent = `${k}=${typeof v === "number" ? +v.toFixed(4) : v}`;
      return span;
    }));
  });
  // A stage starting or ending changes more than a bar: show the page as the server now renders it.
  // `end`: the job has ended and the stream is complete.
  [...structural, "end"].forEach((kind) => source.addEventListener(kind, () => { source.close(); window.location.reload(); }));
})();

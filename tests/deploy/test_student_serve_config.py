"""deploy/serve/student.yaml: a valid Serve config whose application builds the student app."""

from __future__ import annotations

from pathlib import Path

import yaml

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "serve" / "student.yaml"


def test_the_student_serve_config_validates_and_builds_the_app(served_job):
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    from prime_ray.distributed.student import StudentAppArgs, app_builder, route_prefix

    config = yaml.safe_load(CONFIG.read_text())
    ServeDeploySchema.model_validate(config)
    [app] = config["applications"]
    assert app["import_path"] == "prime_ray.distributed.student:app_builder"
    args = StudentAppArgs.model_validate(app["args"])  # every field known, typed
    assert app["route_prefix"] == route_prefix("demo") and app["name"] == "demo-student"
    built = app_builder({**args.model_dump(), "job_dir": str(served_job)})  # the same args on a real job folder
    assert isinstance(built, Application)

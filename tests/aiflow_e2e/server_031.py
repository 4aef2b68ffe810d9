"""AIFlow 0.3.1's own server (AIFlowServer: meta and scheduler services, SQLite), run in its Python 3.7.

The scheduler is AIFlow's own test scheduler, ai_flow.test.api.mock_plugins.MockScheduler (the real
one needs Airflow's services); everything before it -- the gRPC server, the meta store, and
SchedulerService.submitWorkflow, which downloads the project through the blob manager named in the
workflow and extracts it -- is AIFlow's real code. Prints "ready <port>" and serves until stdin closes.

usage: server_031.py PORT SQLITE_PATH REPOSITORY_DIR
"""
import sys

from ai_flow.endpoint.server.server import AIFlowServer
from ai_flow.scheduler_service.service.config import SchedulerServiceConfig


def main():
    port, db_path, repository = sys.argv[1:4]
    config = SchedulerServiceConfig({
        "repository": repository,
        "scheduler": {"scheduler_class": "ai_flow.test.api.mock_plugins.MockScheduler"},
    })
    server = AIFlowServer(store_uri="sqlite:///" + db_path, port=port, start_meta_service=True,
                          start_metric_service=False, start_model_center_service=False,
                          start_scheduler_service=True, scheduler_service_config=config)
    server.run()
    print("ready", port, flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main()

"""ai-flow-nightly 2023.12.31's own upload and download code paths, run in its Python 3.8.

usage: nightly_flow.py WORKFLOW_FILE ARTIFACT_DIR
Reads the blob manager from $AIFLOW_HOME/aiflow_client.yaml as AIFlow does. Runs the client's
upload (ai_flow.common.util.workflow_utils.upload_workflow_snapshot, which ops.upload_workflows
calls before registering the snapshot with the server), then the task manager's download as
ai_flow/cli/commands/task_manager_command.py does it (the blob manager from the same config,
download into $AIFLOW_HOME/snapshots) and extract_workflows_from_zip into a working directory.
The server and its notification service are not started. Prints one JSON line.
"""
import json
import os
import sys

from ai_flow.blob_manager.blob_manager_interface import BlobManagerConfig, BlobManagerFactory
from ai_flow.common.configuration import config_constants
from ai_flow.common.env import get_aiflow_home
from ai_flow.common.util import workflow_utils


def main():
    workflow_file, artifact = sys.argv[1:3]
    file_hash, uploaded_path = workflow_utils.upload_workflow_snapshot(workflow_file, [artifact])
    blob_manager = BlobManagerFactory.create_blob_manager(BlobManagerConfig(config_constants.BLOB_MANAGER))
    snapshot_repo = os.path.join(get_aiflow_home(), "snapshots")
    os.makedirs(snapshot_repo, exist_ok=True)
    local_zip = blob_manager.download(remote_file_path=uploaded_path, local_dir=snapshot_repo)
    working_dir = os.path.join(get_aiflow_home(), "working_dir", file_hash)
    workflows = workflow_utils.extract_workflows_from_zip(local_zip, working_dir)
    print(json.dumps({"uri": uploaded_path, "md5": file_hash, "local_zip": local_zip,
                      "working_dir": working_dir, "blob_manager": type(blob_manager).__module__ + "."
                      + type(blob_manager).__name__, "workflows": sorted(w.name for w in workflows)}))


if __name__ == "__main__":
    main()

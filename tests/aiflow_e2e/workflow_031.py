"""A workflow entry file as an AIFlow 0.3.1 user writes one: workflows/<name>/<name>.py of a project.

Builds the graph from <name>.yaml (jobs of AIFlow's own 'mock' job type, registered by importing
ai_flow.test.api.mock_plugins) and submits it with AIFlow's real client: _upload_project_package
zips the project and uploads it through the project's blob manager, then the server's
submitWorkflow downloads it through the same class. Prints the returned WorkflowInfo as JSON.
"""
import json

import ai_flow.test.api.mock_plugins  # noqa: F401  (registers the 'mock' job plugin)
from ai_flow.ai_graph.ai_graph import current_graph
from ai_flow.ai_graph.ai_node import AINode
from ai_flow.api import workflow_operation
from ai_flow.api.ai_flow_context import init_ai_flow_context
from ai_flow.context.workflow_config_loader import current_workflow_config

init_ai_flow_context()
for job_config in current_workflow_config().job_configs.values():
    node = AINode(name=job_config.job_name)
    node.config = job_config
    current_graph().add_node(node)
info = workflow_operation.submit_workflow(workflow_name=current_workflow_config().workflow_name)
print(json.dumps({"namespace": info.namespace, "workflow_name": info.workflow_name}))

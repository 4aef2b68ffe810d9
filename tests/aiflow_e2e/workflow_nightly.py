"""A workflow file as an ai-flow-nightly user writes one (collected by extract_workflows_from_file)."""
from ai_flow.model.workflow import Workflow
from ai_flow.operators.bash import BashOperator

with Workflow(name="train") as workflow:
    BashOperator(name="task_1", bash_command="echo train")

"""Deploy: run the site playbook from the control host with ansible-runner (see runner.py)."""

from aifactory.deploy.progress import HostProgress, Progress, Update
from aifactory.deploy.runner import DeployOptions, DeployResult, check_converged, deploy_site
from aifactory.deploy.settings import DeploySettings

__all__ = [
    "DeployOptions",
    "DeployResult",
    "DeploySettings",
    "HostProgress",
    "Progress",
    "Update",
    "check_converged",
    "deploy_site",
]

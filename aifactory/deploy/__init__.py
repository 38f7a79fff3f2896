"""Deploy: run the site playbook from the control host with ansible-runner (see runner.py)."""

from aifactory.deploy.progress import HostProgress, Progress, Update
from aifactory.deploy.runner import DeployOptions, DeployResult, deploy_site
from aifactory.deploy.settings import DeploySettings

__all__ = ["DeployOptions", "DeployResult", "DeploySettings", "HostProgress", "Progress", "Update",
           "deploy_site"]

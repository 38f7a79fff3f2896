"""A turn's setup on a site, as the control host runs it: the site's model-signing key and runtime
policy, the turn's jobs through the site's Slurm (`SlurmJobs`), the turn records and trust files of the
site's state folder. `aifactory loop run` and `aifactory up`'s loop stage both build their turn here,
each with the Slurm client and storage places its edge chose."""

from __future__ import annotations

from pathlib import Path

from aifactory.headcopies import collected_signers
from aifactory.loop.jobs import SlurmJobs
from aifactory.loop.turn import Places, TurnSetup
from aifactory.plan import PlannedSite
from aifactory.scheduler.slurm import SlurmClient
from aifactory.scheduler.submit import DEFAULT_RUNTIME_PREFIX
from aifactory.state import SiteState
from aifactory.trust.authz import load_authorizer
from aifactory.trust.issuing.models import ensure_model_key

ALLOWED_SIGNERS = "allowed_signers"  # the sign-off trust file's default place, in <state>/loop


def site_turn_setup(
    planned: PlannedSite,
    *,
    model: str,
    job_template: Path,
    client: SlurmClient,
    state: SiteState,
    places: Places,
    runtime_prefix: Path = DEFAULT_RUNTIME_PREFIX,
    allowed_signers: Path | None = None,
) -> TurnSetup:
    """The setup of `model`'s turn; a model without a `loop` entry is refused (UsageError) before
    anything is made."""
    plan = planned.plan
    state_dir = state.subdir("loop")
    setup = TurnSetup(
        plan=plan,
        model=model,
        job_template=job_template.resolve(),
        key=ensure_model_key(state.subdir("runtime")),
        authorizer=load_authorizer(plan),
        jobs=SlurmJobs(planned, client, runtime_prefix=runtime_prefix),
        places=places,
        state_dir=state_dir,
        allowed_signers=allowed_signers or state_dir / ALLOWED_SIGNERS,
        # The decision-log keys collected from each host (at deploy and audit): a server's canary
        # rollback record must verify against one of them.
        node_signers=collected_signers(state, (host.name for host in plan.hosts)),
    )
    setup.loop  # noqa: B018 -- refuses a model without a loop
    return setup

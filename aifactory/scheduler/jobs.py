"""`aifactory jobs SITE`: the site's Slurm jobs, running and finished.

Running and pending jobs come from `squeue`; finished ones from Slurm's job completion log
(`JobCompType=jobcomp/filetxt`, one line per job, written by slurmctld: who ran what, under which
account, on which nodes, with which result). The decision id comes from the job's comment
(`aifactory-decision=<id>`) or, for finished jobs, from the scheduler's submissions log.
"""

from __future__ import annotations

import datetime as dt
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aifactory.chain import iter_records
from aifactory.scheduler.slurm import SlurmClient, checked
from aifactory.scheduler.submit import DECISION_COMMENT, submissions_log

DEFAULT_JOBCOMP_LOG = Path("/var/log/slurm/jobcomp.log")
# squeue fields: id, account, state, nodes, node list, comment, name, partition, reason
SQUEUE_FORMAT = "%i|%a|%T|%D|%N|%k|%j|%P|%r"


@dataclass(frozen=True)
class SlurmJob:
    id: str
    name: str
    account: str
    partition: str
    state: str
    nodes: int
    nodelist: str
    decision_id: str | None
    exit_code: str | None = None
    reason: str | None = None
    start: str | None = None  # finished jobs: the completion log's StartTime, slurmctld's local time
    end: str | None = None  # and its EndTime

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def interval(self) -> tuple[float, float] | None:
        """A finished job's start and end as Unix seconds (the completion log writes slurmctld's local
        time without a zone: read here as this machine's, where `aifactory jobs` runs beside
        slurmctld on the control host); None for a job that has not ended."""
        if not self.start or not self.end:
            return None
        try:
            start, end = (
                dt.datetime.fromisoformat(t).astimezone().timestamp() for t in (self.start, self.end)
            )
        except ValueError:
            return None
        return (start, end) if end > start else None


def _decision(comment: str) -> str | None:
    return comment[len(DECISION_COMMENT) :] if comment.startswith(DECISION_COMMENT) else None


def parse_squeue(text: str) -> list[SlurmJob]:
    jobs = []
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) != 9:
            continue
        job_id, account, state, nodes, nodelist, comment, name, partition, reason = fields
        jobs.append(
            SlurmJob(
                job_id,
                name,
                account,
                partition,
                state,
                int(nodes or 0),
                nodelist,
                _decision(comment),
                reason=None if reason in ("None", "") else reason,
            )
        )
    return jobs


def parse_jobcomp(text: str) -> list[SlurmJob]:
    """jobcomp/filetxt lines: `JobId=7 UserId=root(0) ... Name=x JobState=COMPLETED Partition=cpu ...`."""
    jobs = []
    for line in text.splitlines():
        fields = dict(word.split("=", 1) for word in shlex.split(line) if "=" in word)
        if "JobId" not in fields:
            continue
        jobs.append(
            SlurmJob(
                fields["JobId"],
                fields.get("Name", ""),
                fields.get("Account", ""),
                fields.get("Partition", ""),
                fields.get("JobState", ""),
                int(fields.get("NodeCnt", "0") or 0),
                fields.get("NodeList", ""),
                None,
                exit_code=fields.get("ExitCode"),
                start=fields.get("StartTime") or None,
                end=fields.get("EndTime") or None,
            )
        )
    return jobs


def submitted_decisions(site: str) -> dict[str, str]:
    """Slurm job id -> decision id, from the scheduler's submissions log on this machine."""
    path = submissions_log(site)
    if not path.exists():
        return {}
    found = {}
    for _, record, _ in iter_records(path):
        if record and record.get("slurm_job_id"):
            found[str(record["slurm_job_id"])] = str(record["decision_id"])
    return found


def list_jobs(site: str, *, client: SlurmClient, jobcomp_log: Path = DEFAULT_JOBCOMP_LOG) -> list[SlurmJob]:
    """Every job Slurm knows (queue) and remembers (completion log), newest last, one line per job."""
    squeue = client.run(["squeue", "--noheader", "--states=all", f"--format={SQUEUE_FORMAT}"])
    queued = parse_squeue(checked(squeue, "squeue", client.where))
    finished_text = client.run(["cat", str(jobcomp_log)])
    finished = parse_jobcomp(finished_text.stdout if finished_text.returncode == 0 else "")
    decisions = submitted_decisions(site)
    by_id: dict[str, SlurmJob] = {job.id: job for job in finished}
    for job in queued:
        done = by_id.get(job.id)
        # the completion log is final; squeue adds the comment (decision) while Slurm still has the job
        by_id[job.id] = SlurmJob(**{**done.as_dict(), "decision_id": job.decision_id}) if done else job
    listed = []
    for job in by_id.values():
        decision = job.decision_id or decisions.get(job.id)
        listed.append(SlurmJob(**{**job.as_dict(), "decision_id": decision}))
    return sorted(listed, key=lambda j: (int(j.id) if j.id.isdigit() else 0, j.id))


def job_hosts(client: SlurmClient, nodelist: str) -> list[str]:
    """A job's node list (`lab-cpu-[001-002]`) as host names, through `scontrol show hostnames`."""
    done = client.run(["scontrol", "show", "hostnames", nodelist])
    return checked(done, "scontrol show hostnames", client.where).split()

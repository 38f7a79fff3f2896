"""The Ansible settings a deploy runs with, written as one ansible.cfg in the site's deploy folder.

`DeploySettings()` are the tuned settings (measured in docs/deploy.md and benchmarks/deploy_bench.py):
many forks, pipelining, long-lived SSH control masters, a JSON fact cache with smart gathering, and
Mitogen's strategy where Mitogen is installed (the `[control]` extra and the bundle's control wheels
carry it): one Python per host for the whole run instead of one per task and host, which halved the
lab's first deploy and cut what the control host sends thirtyfold. Without it, Ansible's own linear
strategy runs the same tasks with the same results, only slower.
`DeploySettings.stock()` are Ansible's own defaults, kept for comparison.

The site's `Connection` (aifactory/connection.py) supplies how to reach its hosts (an ssh config or
key and known_hosts, control path folder, remote tmp, become method); these settings are laid over it.
"""

from __future__ import annotations

import configparser
import importlib.util
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

STOCK_SSH_ARGS = "-C -o ControlMaster=auto -o ControlPersist=60s"
# -C: every task sends its module (AnsiballZ: base64 of a zip) over SSH; compressed, the control host
# sent 28% fewer bytes in a first deploy of the lab (61 -> 44 MB for 3 hosts), with no measured cost
# in controller CPU or wall time (benchmarks/deploy_bench.py floor; docs/deploy.md).
TUNED_SSH_ARGS = "-C -o ControlMaster=auto -o ControlPersist=600s -o ServerAliveInterval=15"
MITOGEN_STRATEGY = "mitogen_linear"
LINEAR_STRATEGY = "linear"


@dataclass(frozen=True)
class DeploySettings:
    forks: int = 20
    pipelining: bool = True
    ssh_args: str = TUNED_SSH_ARGS
    fact_cache: bool = True
    timeout: int = 20
    # How often the controller polls its workers for results; Ansible's default 0.001 s spins a core.
    poll_interval: float | None = 0.02
    # mitogen_linear: the linear strategy's order and results over Mitogen's connection (used when
    # ansible_mitogen can be imported, else `linear`); `linear`: Ansible's own.
    strategy: str = MITOGEN_STRATEGY
    # The converged probe's strategy (one read-only task per host, aifactory_host_state): Ansible's
    # linear. Mitogen's bootstrap of a Python per host pays off over a run's many tasks, not over one:
    # on the 3-host lab the probe took 1.7 CPU-s and 2.9 s under Mitogen, 1.2-1.4 CPU-s and 2.3-2.6 s
    # under linear (medians of 10-24 runs, docs/deploy.md).
    probe_strategy: str = LINEAR_STRATEGY

    @classmethod
    def stock(cls) -> DeploySettings:
        """Ansible's defaults: forks 5, no pipelining, default ssh_args, facts gathered every run."""
        return cls(
            forks=5,
            pipelining=False,
            ssh_args=STOCK_SSH_ARGS,
            fact_cache=False,
            timeout=10,
            poll_interval=None,
            strategy=LINEAR_STRATEGY,
        )


def mitogen_strategy_dir() -> Path | None:
    """The folder of Mitogen's strategy plugins, or None where ansible_mitogen is not installed."""
    spec = importlib.util.find_spec("ansible_mitogen")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "plugins" / "strategy"
    return folder if (folder / f"{MITOGEN_STRATEGY}.py").is_file() else None


def effective_strategy(settings: DeploySettings, mitogen: Path | None) -> str:
    """The strategy a run gets: Mitogen's when asked for and its plugins were found, else linear."""
    return (
        MITOGEN_STRATEGY if settings.strategy == MITOGEN_STRATEGY and mitogen is not None else LINEAR_STRATEGY
    )


def module_run_strategy(settings: DeploySettings, run_strategy: str) -> str:
    """The strategy of a one-task module run (the converged probe): settings.probe_strategy, Mitogen's
    only where the run's own strategy is (its ansible.cfg names Mitogen's plugins), else linear."""
    return run_strategy if settings.probe_strategy == run_strategy else LINEAR_STRATEGY


def _set_strategy(defaults: configparser.SectionProxy, strategy: str, mitogen: Path | None) -> None:
    defaults["strategy"] = strategy
    if strategy == MITOGEN_STRATEGY and mitogen is not None:
        defaults["strategy_plugins"] = str(mitogen)
    else:
        defaults.pop("strategy_plugins", None)


def render_ansible_cfg(
    settings: DeploySettings,
    *,
    folder: Path,
    base: Mapping[str, Mapping[str, str]] | None = None,
    mitogen: Path | None = None,
) -> str:
    """ansible.cfg text: the connection's settings (`base`, by section) with these laid over them.

    `mitogen`: the folder of Mitogen's strategy plugins (`mitogen_strategy_dir()`); without it the
    run uses Ansible's linear strategy whatever `settings.strategy` asks.
    """
    config = configparser.ConfigParser(interpolation=None)
    config.optionxform = str  # type: ignore[assignment,method-assign]  # configparser's documented way to keep keys' case
    config.read_dict({section: dict(options) for section, options in (base or {}).items()})
    for section in ("defaults", "ssh_connection"):
        if not config.has_section(section):
            config.add_section(section)
    defaults, ssh = config["defaults"], config["ssh_connection"]
    defaults.pop("inventory", None)  # deploy passes its own
    defaults["forks"] = str(settings.forks)
    defaults["home"] = defaults.get("home", str(folder / "ansible-home"))
    defaults["local_tmp"] = defaults.get("local_tmp", str(folder / "ansible-home" / "tmp"))
    defaults.setdefault("interpreter_python", "/usr/bin/python3")
    defaults["host_key_checking"] = "True"
    defaults["retry_files_enabled"] = "False"
    defaults["timeout"] = str(settings.timeout)
    if settings.poll_interval is not None:
        defaults["internal_poll_interval"] = str(settings.poll_interval)
    else:
        defaults.pop("internal_poll_interval", None)
    if settings.fact_cache:
        defaults["gathering"] = "smart"
        defaults["fact_caching"] = "ansible.builtin.jsonfile"
        defaults["fact_caching_connection"] = str(folder / "facts")
        defaults["fact_caching_timeout"] = "86400"
    else:
        for key in ("gathering", "fact_caching", "fact_caching_connection", "fact_caching_timeout"):
            defaults.pop(key, None)
    _set_strategy(defaults, effective_strategy(settings, mitogen), mitogen)
    ssh["pipelining"] = str(settings.pipelining)
    # How the connection reaches its hosts (its ssh config, key, known_hosts) is in ssh_common_args,
    # which these tuned ssh_args leave alone.
    ssh["ssh_args"] = settings.ssh_args
    if not ssh.get("control_path_dir"):
        ssh["control_path_dir"] = str(folder / "cp")
    buffer = io.StringIO()
    buffer.write("# Written by `aifactory deploy` for this run; see docs/deploy.md.\n")
    config.write(buffer)
    return buffer.getvalue()

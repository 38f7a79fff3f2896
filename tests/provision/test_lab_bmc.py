"""The Redfish logic against the lab's own BMCs (sushy-tools emulators on the BMC fabric, reached from
the control host's namespaces with the credential `lab up` stored). Read-only: the shared lab's
power and boot state are left as they are."""

from __future__ import annotations

import json
import sys

import pytest

from aifactory.lab.bmc import bmc_url, system_mac, system_uuid

pytestmark = pytest.mark.lab

PROBE = """
import json, sys
from aifactory.errors import ProvisionError
from aifactory.provision.host import BareMetalHostLogic
from aifactory.provision.identity import read_identity
request = json.load(sys.stdin)
props = {"host": request["host"], "endpoint": request["endpoint"], "credentials": request["credential"],
         "credentials_ref": request["reference"], "boot": {"source": "pxe"}}
logic = BareMetalHostLogic()
client = logic.client(props)
system = client.find_system()
result = {"identity": read_identity(client, system).as_dict(),
          "diff": list(logic.diff({**props, "identity": {"uuid": system["UUID"]}}, props).replaces)}
try:
    logic.client({**props, "credentials": request["host"] + ":wrong"}).find_system()
except ProvisionError as error:
    result["wrong_credential"] = error.code
print(json.dumps(result))
"""


def test_the_lab_bmcs_answer_with_the_planned_system(lab):
    host = next(h for h in lab.plan.hosts if h.bmc)
    credential = lab.bmc_credential(host.name)
    request = {
        "host": host.name,
        "endpoint": bmc_url(host),
        "reference": host.bmc.credentials,
        "credential": f"{credential.username}:{credential.password}",
    }
    done = lab.exec([sys.executable, "-c", PROBE], input_text=json.dumps(request))
    result = json.loads(done.stdout)
    assert result["identity"]["uuid"] == system_uuid(lab.site, host.name)
    assert system_mac(lab.site, host.name) in result["identity"]["macs"]
    assert result["diff"] == []  # the same system as recorded: no replace
    assert result["wrong_credential"] == "bmc-auth"

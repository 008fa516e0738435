"""Drives a Slipway daemon with App Platform's own Python client, pydo.

Usage: pydo_client.py ENDPOINT TOKEN CA_CERT APP_NAME. Prints what it read, as JSON.
"""

import json
import sys
import time

from pydo import Client

endpoint, token, cert, app_name = sys.argv[1:5]
client = Client(token=token, endpoint=endpoint, connection_verify=cert)
out = {}

apps = client.apps.list()["apps"]
app_id = next(a["id"] for a in apps if a["spec"]["name"] == app_name)


def wait(deployment_id):
    for _ in range(1200):
        d = client.apps.get_deployment(app_id, deployment_id)["deployment"]
        if d["phase"] in ("ACTIVE", "ERROR", "CANCELED", "SUPERSEDED"):
            return d
        time.sleep(0.1)
    raise SystemExit(f"deployment {deployment_id} did not end")


d = wait(client.apps.restart(app_id)["deployment"]["id"])
out["restart_all"] = [d["phase"], d["cause"]]

d = wait(client.apps.restart(app_id, {"components": ["web"]})["deployment"]["id"])
out["restart_web"] = [d["phase"], d.get("restart_components")]

d = wait(client.apps.create_deployment(app_id, {"force_build": True})["deployment"]["id"])
out["force_build"] = [d["phase"], d["cause"], d["services"][0]["source_commit_hash"]]

listed = client.apps.list_deployments(app_id)
out["list"] = [listed["meta"]["total"], [x["cause"] for x in listed["deployments"]]]

got = client.apps.get_deployment(app_id, d["id"])["deployment"]
out["get"] = [got["id"] == d["id"], got["progress"]["success_steps"], got["progress"]["total_steps"]]

slow = client.apps.create_deployment(app_id, {"force_build": True})["deployment"]["id"]
time.sleep(0.5)
canceled = client.apps.cancel_deployment(app_id, slow)["deployment"]
out["cancel"] = canceled["phase"]

print(json.dumps(out))

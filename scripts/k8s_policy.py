"""What the rendered Switchboard manifests must have beyond a valid schema."""
import sys
import yaml

WORKLOADS = ("Deployment", "StatefulSet")


def selected(pdb, labels):
    want = pdb["spec"].get("selector", {}).get("matchLabels", {})
    return bool(want) and all(labels.get(k) == v for k, v in want.items())


def check(docs):
    errors = []
    config = next((d for d in docs if d["kind"] == "ConfigMap"), {}).get("data", {})
    drain = int(config.get("SWITCHBOARD_DRAIN_TIMEOUT_SECS", "15"))
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for w in (d for d in docs if d["kind"] in WORKLOADS):
        name, pod = w["metadata"]["name"], w["spec"]["template"]["spec"]
        labels = w["spec"]["template"]["metadata"].get("labels", {})
        if not any(selected(p, labels) for p in pdbs):
            errors.append(f"{name}: no PodDisruptionBudget selects it")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if name == "messaging-server" and grace <= drain + 10:
            errors.append(f"{name}: terminationGracePeriodSeconds {grace} must exceed the drain ({drain}s) + 10s")
        if name == "coordinator" and w["spec"].get("replicas", 1) < 2:
            errors.append(f"{name}: run at least 2 replicas")
        for c in pod.get("containers", []):
            where = f"{name}/{c['name']}"
            image = c.get("image", "")
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
            if not tag or tag == "latest":
                errors.append(f"{where}: image {image!r} must have a pinned tag (not latest)")
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                if probe not in c:
                    errors.append(f"{where}: missing {probe}")
            res = c.get("resources", {})
            if not res.get("requests") or not res.get("limits"):
                errors.append(f"{where}: resources need requests and limits")
    for want in ("coordinator", "messaging-server", "persister"):
        if not any(d["kind"] in WORKLOADS and d["metadata"]["name"] == want for d in docs):
            errors.append(f"missing workload {want}")
    return errors


def main(path):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    errors = check(docs)
    for e in errors:
        print(f"k8s policy: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

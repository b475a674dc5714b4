"""The DKIM scenario (issue 14): what signing costs.

* ``dkim-sign`` (one process): the bench campaign's messages composed unsigned, then the same
  bytes signed with a 2048-bit RSA key and with an Ed25519 key: µs per message for each, next
  to composing one.
* ``dkim`` in ``python -m bench``: the e2e scenario (100,000 recipients, ``send_campaign``,
  Postgres, smtp-sink) unsigned, signed with RSA-2048 and signed with Ed25519 in the same
  invocation, interleaved; target: each signed rate ≥ 0.7× the unsigned one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.__main__ import Bench

KINDS = ("ed25519", "rsa")  # the e2e runs in this order, after the unsigned one
TARGET = "≥ 0.7× unsigned"


def write_key(folder: Path, kind: str) -> dict[str, Any]:
    """A new private key in ``folder`` (PEM); the campaign's ``dkim`` section for it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ed25519.Ed25519PrivateKey.generate()
    )
    folder.mkdir(parents=True, exist_ok=True)
    name = f"dkim-{kind}.pem"
    (folder / name).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return {"selector": f"bench-{kind}", "key_file": name}


def sign_cost(n: int, workdir: Path) -> dict[str, Any]:
    """µs per message: composing (unsigned), and signing the composed bytes with each key."""
    from bench.scenarios import campaign
    from mailcast.compose.composer import Composer
    from mailcast.compose.dkim import signer_for
    from mailcast.spec import DkimSpec, load_spec

    folder = workdir / "dkim-sign"
    spec = load_spec(campaign(folder, n))
    composer = Composer.for_preview(spec, ["email", "first_name", "last_name", "city"])
    rows = [
        {"email": f"user{i}@example.com", "first_name": f"First{i}", "last_name": f"Last{i}",
         "city": ("Paris", "Zürich", "Lagos")[i % 3]}
        for i in range(n)
    ]  # fmt: skip
    # CPU time, not wall time: the figure holds on a busy machine (one thread, one process)
    t, cpu = time.perf_counter(), time.process_time()
    messages = [composer.compose(i + 1, i + 2, r["email"], r).data for i, r in enumerate(rows)]
    result: dict[str, Any] = {
        "messages": n,
        "seconds": time.perf_counter() - t,
        "compose_us": 1e6 * (time.process_time() - cpu) / n,
        "message_bytes": len(messages[0]),
    }
    for kind in KINDS:
        signed = spec.model_copy(update={"dkim": DkimSpec(**write_key(folder, kind))})
        signer = signer_for(signed)
        assert signer is not None
        cpu = time.process_time()
        for data in messages:
            signer(data)
        result[f"{kind}_us"] = 1e6 * (time.process_time() - cpu) / n
    return result


def run_dkim(bench: Bench) -> None:
    """The e2e run unsigned, with RSA and with Ed25519 (interleaved, ``repeat`` times each),
    and the per-message signing cost."""
    from bench.__main__ import med, peak
    from bench.scenarios import valid_recipients

    n = bench.sizes["e2e"]
    spec = bench.spec_e2e(n, 1000)
    bench.say(f"dkim: signing cost per message, then {n:,} recipients unsigned / RSA / Ed25519")
    micro = bench.scenario("dkim-sign", ["dkim-sign", "-n", "2000"])
    if micro.ok:
        r = micro.result
        for kind, label in (("rsa", "RSA-2048"), ("ed25519", "Ed25519")):
            bench.add(f"dkim: sign one message ({label})", r["messages"], f"{r[f'{kind}_us']:,.0f} µs CPU",
                      f"compose {r['compose_us']:,.0f} µs", f"{r[f'{kind}_us'] / r['compose_us']:.2f}×",
                      micro.rss_mb, "(info)")  # fmt: skip
        bench.notes.append(
            f"dkim-sign: {r['messages']:,} messages of {r['message_bytes']:,} bytes composed"
            " in one process (render, tracking off, MIME), then signed: relaxed/relaxed, every"
            " header, one SHA-256 of the body, one signature (OpenSSL via cryptography);"
            " CPU time per message (holds on a busy machine)"
        )
    else:
        bench.notes.append(f"dkim-sign: {micro.error}")
    runs: dict[str, list[Any]] = {"unsigned": [], **{k: [] for k in KINDS}}
    for _ in range(bench.repeat):
        for variant in runs:
            extra = {} if variant == "unsigned" else {"dkim_key": variant}
            runs[variant].append(
                bench.mailcast(f"dkim-e2e-{variant}", n, bench.sink_url, {**spec, **extra},
                               timeout=bench.args.run_timeout)
            )  # fmt: skip
    good = {v: [r for r in rs if r.ok] for v, rs in runs.items()}
    if not good["unsigned"]:
        bench.add("dkim-e2e (unsigned)", n, "failed", target="baseline", met=False)
        bench.notes.append(f"dkim-e2e unsigned: {runs['unsigned'][0].error}")
        return
    expected = valid_recipients(n)

    def rates(variant: str) -> tuple[float, float]:
        rs = good[variant]
        whole = med(r.result["messages"] / r.result["seconds"] for r in rs)
        phase = med(r.ledger["send_rate"] for r in rs if r.ledger.get("send_rate"))
        return whole, phase

    base = rates("unsigned")
    bench.add("dkim-e2e unsigned (whole run)", n, f"{base[0]:,.0f} msgs/s", rss=peak(runs["unsigned"]),
              target="baseline")  # fmt: skip
    for kind, label in (("rsa", "RSA-2048"), ("ed25519", "Ed25519")):
        if not good[kind]:
            bench.add(f"dkim-e2e {label}", n, "failed", target=TARGET, met=False)
            bench.notes.append(f"dkim-e2e {kind}: {runs[kind][0].error}")
            continue
        complete = all(r.result["messages"] == expected for r in good[kind])
        for i, part in enumerate(("whole run", "send phase")):
            rate = rates(kind)[i]
            ratio = rate / base[i] if base[i] else 0.0
            bench.add(f"dkim-e2e {label} ({part})", n, f"{rate:,.0f} msgs/s",
                      f"unsigned {base[i]:,.0f}", f"{ratio:.2f}×", peak(runs[kind]), TARGET,
                      ratio >= 0.7 and complete)  # fmt: skip
    cpu = {
        v: [round(1e6 * r.result.get("cpu_seconds", 0) / max(r.result["messages"], 1)) for r in rs]
        for v, rs in good.items()
    }
    bench.notes.append(
        f"dkim-e2e: spec {bench.spec_note(spec)}, signed runs with a `dkim` section (key file in"
        f" the campaign folder); runs interleaved (unsigned, Ed25519, RSA) × {bench.repeat};"
        f" whole-run seconds { {v: [round(r.result['seconds'], 1) for r in rs] for v, rs in good.items()} };"
        f" mailcast's CPU per message sent, µs: {cpu}"
    )

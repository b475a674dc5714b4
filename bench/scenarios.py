"""Benchmark scenarios. ``python -m bench`` runs each repetition of each scenario in its own
process (``python -m bench.scenarios NAME ... --out FILE``), so that its peak memory is its own;
the result is one JSON object written to ``--out`` (``{"messages", "seconds", ...}``).

Every scenario uses the same deterministic recipient data (:func:`write_recipients`) and the same
templates: a personalized subject, a ~2 KB HTML body and a text body.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import shutil
import smtplib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

HTML = (
    "<html><body>\n<h1>Hello {{ first_name }} {{ last_name }}</h1>\n"
    + "<p>Spring is here, {{ first_name }}: our picks for {{ city }} are in.</p>\n" * 24
    + "</body></html>\n"
)
TEXT = "Hello {{ first_name }},\n" + "Spring is here: our picks for {{ city }} are in.\n" * 30
SUBJECT = "{{ first_name }}, our spring picks for {{ city }}"
SENDER = "Bench <bench@mailcast.example>"


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its reaped children (the flow's worker
    processes): what the run cost the machine on mailcast's side, whatever else ran beside it."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def write_recipients(path: Path, n: int) -> None:
    """Deterministic recipient data: n rows, ~2% invalid, ~1% duplicates."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["email", "first_name", "last_name", "city"])
        for i in range(n):
            if i % 50 == 49:
                email = f"broken-address-{i}"
            elif i % 100 == 98:
                email = f"user{i - 1}@example.com".upper()
            else:
                email = f"user{i}@example.com"
            w.writerow([email, f"First{i}", f"Last{i}", ("Paris", "Zürich", "Lagos")[i % 3]])


def ensure_recipients(path: Path, n: int) -> Path:
    """:func:`write_recipients`, skipped when ``path`` already holds the same n rows (a marker
    file next to it says so): the 1,000,000-row file is written once per work folder."""
    marker = path.with_name(path.name + ".rows")
    if path.exists() and marker.exists() and marker.read_text() == str(n):
        return path
    write_recipients(path, n)
    marker.write_text(str(n))
    return path


def valid_recipients(n: int) -> int:
    """How many of :func:`write_recipients`'s n rows mailcast sends to (not invalid, not a
    duplicate)."""
    invalid = sum(1 for i in range(n) if i % 50 == 49)
    dupes = sum(1 for i in range(n) if i % 100 == 98 and i % 50 != 49)
    return n - invalid - dupes


def campaign(folder: Path, n: int, **extra: Any) -> Path:
    import yaml

    ensure_recipients(folder / "data" / "recipients.csv", n)
    (folder / "templates").mkdir(parents=True, exist_ok=True)
    (folder / "templates" / "body.html.j2").write_text(HTML, encoding="utf-8")
    (folder / "templates" / "body.txt.j2").write_text(TEXT, encoding="utf-8")
    spec = {
        "name": f"bench-{n}",
        "sender": SENDER,
        "subject": SUBJECT,
        "html": "templates/body.html.j2",
        "text": "templates/body.txt.j2",
        "recipients": {"path": "data/recipients.csv"},
        **extra,
    }
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def prebuilt_message() -> bytes:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = "user@example.com"
    msg["Subject"] = "Hello"
    msg.set_content(TEXT)
    msg.add_alternative(HTML, subtype="html")
    # CRLF line ends, as on the wire (smtplib sends bytes unchanged; smtp-sink would accept bare
    # LFs, a strict server reads the whole message as one over-long line)
    return msg.as_bytes(policy=policy.SMTP)


# -- baselines -----------------------------------------------------------------------------------


def raw(port: int, n: int) -> dict[str, Any]:
    """The raw Python ceiling: one smtplib connection sending pre-built bytes."""
    data = prebuilt_message()
    t = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as s:
        for i in range(n):
            s.sendmail("bench@mailcast.example", [f"user{i}@example.com"], data)
    return {"messages": n, "seconds": time.perf_counter() - t, "message_bytes": len(data)}


def threads(port: int, n: int, connections: int) -> dict[str, Any]:
    """The slow-server reference: ``connections`` threads, each with one blocking smtplib
    connection, sending n pre-built messages between them."""
    import threading

    data = prebuilt_message()
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
                for i in range(k, n, connections):
                    s.sendmail("bench@mailcast.example", [f"user{i}@example.com"], data)
        except BaseException as exc:  # reported in the result, not lost in a thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(connections)]
    t = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {connections} connections failed: {errors[0]!r}")
    return {"messages": n, "seconds": time.perf_counter() - t}


def naive(port: int, n: int, workdir: Path) -> dict[str, Any]:
    """How simple mail-merge tools do it: read the CSV, then per row an EmailMessage (Jinja2
    render of subject and both bodies) and a new connection per message."""
    from jinja2 import Environment

    path = ensure_recipients(workdir / "data" / f"recipients-{n}.csv", n)
    env = Environment(autoescape=False)
    subject, html, text = (env.from_string(s) for s in (SUBJECT, HTML, TEXT))
    size = 0
    t = time.perf_counter()
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            msg = EmailMessage()
            msg["From"] = SENDER
            msg["To"] = row["email"]
            msg["Subject"] = subject.render(row)
            msg.set_content(text.render(row))
            msg.add_alternative(html.render(row), subtype="html")
            with smtplib.SMTP("127.0.0.1", port) as s:
                s.send_message(msg)
            size = size or len(msg.as_bytes())
    return {"messages": n, "seconds": time.perf_counter() - t, "message_bytes": size}


MAILMERGE_TEMPLATE = (
    "TO: {{email}}\nSUBJECT: " + SUBJECT + "\nFROM: " + SENDER + "\n"
    'MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="b"\n\n'
    f"--b\nContent-Type: text/plain; charset=utf-8\n\n{TEXT}\n"
    f"--b\nContent-Type: text/html; charset=utf-8\n\n{HTML}\n--b--\n"
)
_SENT_LINE = re.compile(r"^>>> message \d+ sent$", re.M)


def _mailmerge_exe() -> str:
    exe = shutil.which("mailmerge") or str(Path(sys.executable).parent / "mailmerge")
    if not Path(exe).exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "mailmerge"], check=True)
    return exe


def _mailmerge_folder(port: int, n: int, workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(
        ensure_recipients(workdir.parent / "data" / f"recipients-{n}.csv", n),
        workdir / "mailmerge_database.csv",
    )
    (workdir / "mailmerge_template.txt").write_text(MAILMERGE_TEMPLATE, encoding="utf-8")
    (workdir / "mailmerge_server.conf").write_text(
        f"[smtp_server]\nhost = 127.0.0.1\nport = {port}\nsecurity = Never\nratelimit = 0\n",
        encoding="utf-8",
    )
    return workdir


def _run_mailmerge(workdir: Path, n: int) -> None:
    """Run mailmerge on every row; raise unless it exited 0 and reported each message sent."""
    proc = subprocess.run(
        [_mailmerge_exe(), "--no-dry-run", "--no-limit", "--output-format", "raw"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    sent = len(_SENT_LINE.findall(proc.stdout))
    if proc.returncode != 0 or sent != n:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(
            f"mailmerge exited {proc.returncode} after {sent} of {n} messages: {' / '.join(tail)}"
        )


def mailmerge(port: int, n: int, workdir: Path) -> dict[str, Any]:
    """mailmerge from PyPI (installed on demand) on the same input (every row: it does not
    validate or dedupe), checked: exit code 0 and one "sent" line per row."""
    folder = _mailmerge_folder(port, n, workdir)
    _mailmerge_exe()
    t = time.perf_counter()
    _run_mailmerge(folder, n)
    return {"messages": n, "seconds": time.perf_counter() - t}


def mailmerge_check(workdir: Path, n: int = 5) -> dict[str, Any]:
    """Once per bench: mailmerge against a capturing server really delivers n well-formed,
    personalized messages (so its timed runs against smtp-sink measure real sending)."""
    from mailcast.capture import CaptureServer

    with CaptureServer() as server:
        _run_mailmerge(_mailmerge_folder(server.port, n, workdir), n)
        got = server.wait_for(n, timeout=10)
    first = BytesParser(policy=policy.default).parsebytes(got[0].data)
    html = first.get_body(("html",))
    ok = (
        len(got) == n
        and first["Subject"] == "First0, our spring picks for Paris"
        and html is not None
        and "Hello First0 Last0" in html.get_content()  # type: ignore[attr-defined]
    )
    if not ok:
        raise RuntimeError(f"mailmerge check: {len(got)} of {n} captured, first {first['Subject']}")
    return {"messages": len(got), "seconds": 0.0, "message_bytes": len(got[0].data)}


# -- mailcast ------------------------------------------------------------------------------------


def mailcast(
    smtp_url: str, db_url: str, n: int, workdir: Path, spec_extra: dict[str, Any]
) -> dict[str, Any]:
    """The real ``send_campaign`` flow on n rows: ingest, validate, dedupe, plan, render, send,
    ledger. ``seconds`` is the flow call's wall time (Prefect's import and server start are not
    in it; the orchestrator reads the send phase from the ledger)."""
    from mailcast.flows.campaign import send_campaign

    from mailcast.spec import load_spec

    folder = workdir / f"campaign-{n}"
    kind = spec_extra.pop("dkim_key", None)  # the DKIM scenario: signed with a new key
    if kind:
        from bench.dkim import write_key

        spec_extra = {**spec_extra, "dkim": write_key(folder, kind)}
    spec = load_spec(campaign(folder, n, **spec_extra))
    os.environ["MAILCAST_DATABASE_URL"] = db_url  # the flow reads its ledger from the settings
    t = time.perf_counter()
    cpu = cpu_seconds()
    # an API provider's URL (sendgrid://...) goes to the flow as the transport URL
    url = {"smtp_url": smtp_url} if smtp_url.startswith("smtp") else {"transport_url": smtp_url}
    summary = send_campaign(spec=spec, dry_run=False, **url)
    seconds = time.perf_counter() - t
    return {
        "messages": summary.counts.get("sent", 0),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu,
        "status": summary.status,
        "counts": {k: v for k, v in summary.counts.items() if v},
    }


def ingest(n: int, workdir: Path) -> dict[str, Any]:
    from bench.ingest import measure

    return measure(ensure_recipients(workdir / "data" / f"recipients-{n}.csv", n))


def plan_copy(pg: str, rows: int, baseline_rows: int) -> dict[str, Any]:
    from bench.plan_copy import measure

    return measure(pg, rows=rows, baseline_rows=baseline_rows, repeat=1)


def list_import(pg: str, rows: int, baseline_rows: int, workdir: Path) -> dict[str, Any]:
    from bench.list_import import measure

    return measure(pg, rows=rows, baseline_rows=baseline_rows, workdir=workdir)


def median_of(fn: Callable[[], dict[str, Any]], repeat: int) -> dict[str, Any]:
    runs = [fn() for _ in range(repeat)]
    secs = statistics.median(r["seconds"] for r in runs)
    return {**runs[0], "seconds": secs, "runs": [round(r["seconds"], 3) for r in runs]}


NAMES = [
    "tracking",
    "raw",
    "raw-parallel",
    "threads",
    "naive",
    "mailmerge",
    "mailmerge-check",
    "mailcast",
    "ingest",
    "plan-copy",
    "list-import",
    "dkim-sign",
    "http-bare",
    "segment-count",
]


def _threads_timed(port: int, n: int, connections: int) -> tuple[float, float]:
    t = time.time()
    threads(port, n, connections)
    return t, time.time()


def raw_parallel(port: int, n: int, processes: int, connections: int) -> dict[str, Any]:
    """Pre-built bytes from ``processes`` processes × ``connections`` threads (one smtplib
    connection each): Python's ceiling on this machine with both cores (issue 4's guide: 2 × 4
    ≈ 4,300 msgs/s). Timed from the first process's start of sending to the last one's end."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    per = n // processes
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        list(pool.map(int, range(processes)))  # started and imported before the clock runs
        spans = list(pool.map(_threads_timed, [port] * processes, [per] * processes,
                              [connections] * processes))  # fmt: skip
    start = min(a for a, _ in spans)
    end = max(b for _, b in spans)
    return {"messages": per * processes, "seconds": end - start}


def main() -> None:
    ap = argparse.ArgumentParser(description="run one benchmark scenario once")
    ap.add_argument("name", choices=NAMES)
    ap.add_argument("--port", type=int, default=0, help="SMTP port (raw, naive, mailmerge)")
    ap.add_argument("--smtp", default="", help="SMTP or API provider URL (mailcast)")
    ap.add_argument("--base-url", default="", help="the fake API's base URL (http-bare)")
    ap.add_argument("--db", default="", help="ledger URL (mailcast)")
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--spec", default="{}", help="JSON: extra campaign spec fields (mailcast)")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=200, help="threads (per process)")
    ap.add_argument("--processes", type=int, default=3, help="raw-parallel")
    ap.add_argument("--baseline-rows", type=int, default=20_000, help="plan-copy, list-import")
    ap.add_argument("--repeat", type=int, default=3, help="segment-count: counts per segment")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mailcast-bench"))
    ap.add_argument("--out", type=Path, help="write the JSON result here (default: stdout)")
    args = ap.parse_args()
    result: dict[str, Any]
    if args.name == "raw":
        result = raw(args.port, args.n)
    elif args.name == "raw-parallel":
        result = raw_parallel(args.port, args.n, args.processes, args.connections)
    elif args.name == "threads":
        result = threads(args.port, args.n, args.connections)
    elif args.name == "naive":
        result = naive(args.port, args.n, args.workdir)
    elif args.name == "mailmerge":
        result = mailmerge(args.port, args.n, args.workdir / "mailmerge")
    elif args.name == "mailmerge-check":
        result = mailmerge_check(args.workdir / "mailmerge-check")
    elif args.name == "mailcast":
        result = mailcast(args.smtp, args.db, args.n, args.workdir, json.loads(args.spec))
    elif args.name == "dkim-sign":
        from bench.dkim import sign_cost

        result = sign_cost(args.n, args.workdir)
    elif args.name == "ingest":
        result = ingest(args.n, args.workdir)
    elif args.name == "segment-count":
        from bench.segment_count import measure

        result = measure(args.pg, n=args.n, repeat=args.repeat)
    elif args.name == "list-import":
        result = list_import(args.pg, args.n, args.baseline_rows, args.workdir)
    elif args.name == "tracking":
        from bench.tracking import measure

        result = measure(args.db, args.n, args.workdir)
    elif args.name == "http-bare":
        from bench.http_provider import bare

        result = bare(args.base_url, args.n, args.connections)
    else:
        result = plan_copy(args.pg, args.n, args.baseline_rows)
    result["rss_mb"] = round(peak_rss_mb(), 1)
    text = json.dumps(result)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()

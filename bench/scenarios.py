"""Benchmark scenarios. Each runs in its own process (``python -m bench.scenarios NAME ...``) so
its peak RSS is its own, and prints one JSON line: {"messages", "seconds", "rss_mb", ...}."""

from __future__ import annotations

import argparse
import csv
import json
import resource
import smtplib
import statistics
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

HTML = (
    "<html><body><h1>Hello {{ first_name }} {{ last_name }}</h1>"
    + "<p>Spring is here, {{ first_name }}: our picks for {{ city }} are in.</p>" * 24
    + "</body></html>"
)
TEXT = "Hello {{ first_name }},\n" + "Spring is here: our picks for {{ city }} are in.\n" * 30


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


def campaign(folder: Path, n: int, **extra: Any) -> Path:
    import yaml

    write_recipients(folder / "data" / "recipients.csv", n)
    (folder / "templates").mkdir(parents=True, exist_ok=True)
    (folder / "templates" / "body.html.j2").write_text(HTML, encoding="utf-8")
    (folder / "templates" / "body.txt.j2").write_text(TEXT, encoding="utf-8")
    spec = {
        "name": f"bench-{n}",
        "sender": "Bench <bench@mailcast.example>",
        "subject": "{{ first_name }}, our spring picks for {{ city }}",
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
    msg["From"] = "Bench <bench@mailcast.example>"
    msg["To"] = "user@example.com"
    msg["Subject"] = "Hello"
    msg.set_content(TEXT)
    msg.add_alternative(HTML, subtype="html")
    return msg.as_bytes()


def raw(port: int, n: int) -> dict[str, Any]:
    """The raw Python ceiling: one smtplib connection sending pre-built bytes."""
    data = prebuilt_message()
    t = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as s:
        for i in range(n):
            s.sendmail("bench@mailcast.example", [f"user{i}@example.com"], data)
    return {"messages": n, "seconds": time.perf_counter() - t}


def naive(port: int, n: int) -> dict[str, Any]:
    """How simple mail-merge tools do it: an EmailMessage per recipient (Jinja2 render, both
    bodies) and a new connection per message."""
    from jinja2 import Environment

    env = Environment(autoescape=False)
    subject, html, text = (env.from_string(s) for s in ("{{ first_name }}, hello", HTML, TEXT))
    t = time.perf_counter()
    for i in range(n):
        ctx = {"first_name": f"First{i}", "last_name": f"Last{i}", "city": "Paris"}
        msg = EmailMessage()
        msg["From"] = "Bench <bench@mailcast.example>"
        msg["To"] = f"user{i}@example.com"
        msg["Subject"] = subject.render(ctx)
        msg.set_content(text.render(ctx))
        msg.add_alternative(html.render(ctx), subtype="html")
        with smtplib.SMTP("127.0.0.1", port) as s:
            s.send_message(msg)
    return {"messages": n, "seconds": time.perf_counter() - t}


def mailmerge(port: int, n: int, workdir: Path) -> dict[str, Any]:
    """mailmerge from PyPI (installed on demand) on the same input."""
    import shutil
    import subprocess

    exe = shutil.which("mailmerge") or str(Path(sys.executable).parent / "mailmerge")
    if not Path(exe).exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "mailmerge"], check=True)
    workdir.mkdir(parents=True, exist_ok=True)
    write_recipients(workdir / "mailmerge_database.csv", n)
    (workdir / "mailmerge_template.txt").write_text(
        "TO: {{email}}\nSUBJECT: {{first_name}}, hello\nFROM: Bench <bench@mailcast.example>\n"
        'MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="b"\n\n'
        f"--b\nContent-Type: text/plain; charset=utf-8\n\n{TEXT}\n"
        f"--b\nContent-Type: text/html; charset=utf-8\n\n{HTML}\n--b--\n",
        encoding="utf-8",
    )
    (workdir / "mailmerge_server.conf").write_text(
        f"[smtp_server]\nhost = 127.0.0.1\nport = {port}\nsecurity = Never\n"
        "username = None\nratelimit = 0\n",
        encoding="utf-8",
    )
    t = time.perf_counter()
    subprocess.run(
        [exe, "--no-dry-run", "--no-limit", "--resume", "1"],
        cwd=workdir,
        check=False,
        capture_output=True,
    )
    return {"messages": n, "seconds": time.perf_counter() - t}


def median_of(fn: Callable[[], dict[str, Any]], repeat: int) -> dict[str, Any]:
    runs = [fn() for _ in range(repeat)]
    secs = statistics.median(r["seconds"] for r in runs)
    return {**runs[0], "seconds": secs, "runs": [round(r["seconds"], 3) for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=["raw", "naive", "mailmerge"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mailcast-bench"))
    args = ap.parse_args()
    if args.name == "raw":
        result = raw(args.port, args.n)
    elif args.name == "naive":
        result = naive(args.port, args.n)
    else:
        result = mailmerge(args.port, args.n, args.workdir / "mailmerge")
    result["rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

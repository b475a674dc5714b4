"""Asynchronous bounces: a Maildir holding real-world-shaped reports (a Postfix DSN, an Exchange
Online NDR, a Gmail 550 5.1.1, a qmail "452 mailbox full", an ARF complaint from a mailbox
provider, a delay notice, an out-of-office reply and a DSN about someone else's message) is
processed by ``process_mailbox`` (the plain function, and once through the ``process-bounces``
flow): the right classification, events, suppressions, each message counted once even when it
is seen twice. Also: soft bounces N in a row, SMTP-time rejections, the parser on its own."""

from __future__ import annotations

import base64
import json
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from mailcast.engagement import bounces, tokens
from mailcast.engagement.mailbox import MaildirInbox
from mailcast.engagement.processing import process_mailbox, record_smtp_bounces
from mailcast.ledger.models import FAILED, SENT, SmtpStage
from mailcast.ledger.store import Ledger, Outcome
from mailcast.recipients import Recipient
from tests.ledger_rows import claim_pending

SECRET = b"bounce-test-secret-0123456789"
DOMAIN = "mailcast.example"
BOUNCE_DOMAIN = "bounces.mailcast.example"

ADDRESSES = {
    "postfix": "gone.user@example.net",
    "exchange": "j.doe@contoso.example",
    "gmail": "nobody.here@gmail.example",
    "qmail": "full.box@example.org",
    "arf": "angry@yahoo.example",
    "delayed": "slow@example.com",
    "quiet": "fine@example.com",
}


class Sent:
    """A run whose messages were all accepted: delivery ids, Message-IDs and VERP addresses."""

    def __init__(
        self, url: str, addresses: list[str] | None = None, campaign: str | None = None
    ) -> None:
        # Addresses of their own (the Postgres ledger is shared by the session's tests).
        tag = uuid.uuid4().hex[:6]
        self.addr = {k: v.replace("@", f"+{tag}@") for k, v in ADDRESSES.items()}
        addresses = addresses if addresses is not None else list(self.addr.values())
        self.ledger = Ledger(url)
        self.run_id = self.ledger.create_run(
            campaign or f"bounces-{uuid.uuid4().hex[:6]}", {}, dry_run=False, transport=None
        )
        self.ledger.plan(
            self.run_id,
            [Recipient(i + 2, a, {"email": a}, None, a.lower()) for i, a in enumerate(addresses)],
        )
        claims = claim_pending(self.ledger, self.run_id, 1000)
        self.ids = {c.address: c.id for c in claims}
        self.mids = {a: f"<{self.run_id}.{i}@{DOMAIN}>" for a, i in self.ids.items()}
        self.ledger.record(
            [Outcome(c.id, "sent", smtp_code=250, message_id=self.mids[c.address]) for c in claims]
        )

    def verp(self, address: str) -> str:
        return tokens.verp_address(SECRET, self.ids[address], BOUNCE_DOMAIN)


# -- real-world-shaped reports --------------------------------------------------------------------


def postfix_dsn(s: Sent) -> str:
    a = s.addr["postfix"]
    return f"""Return-Path: <>
Delivered-To: {s.verp(a)}
Received: by mx1.mailcast.example (Postfix) id 4Xq1Zt0J3Bz9sQ; Mon, 23 Nov 2026 10:02:11 +0000 (UTC)
Date: Mon, 23 Nov 2026 10:02:11 +0000 (UTC)
From: MAILER-DAEMON@mail.example.net (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {s.verp(a)}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="4Xq1Zt0J3Bz9sQ.1732356131/mail.example.net"
Content-Transfer-Encoding: 8bit
Message-Id: <20261123100211.4Xq1Zt0J3Bz9sQ@mail.example.net>

This is a MIME-encapsulated message.

--4Xq1Zt0J3Bz9sQ.1732356131/mail.example.net
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mail.example.net.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

                   The mail system

<{a}>: host mx.example.net[198.51.100.7] said: 550 5.1.1
    <{a}>: Recipient address rejected: User unknown in virtual mailbox
    table (in reply to RCPT TO command)

--4Xq1Zt0J3Bz9sQ.1732356131/mail.example.net
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mail.example.net
X-Postfix-Queue-ID: 4Xq1Zt0J3Bz9sQ
X-Postfix-Sender: rfc822; {s.verp(a)}
Arrival-Date: Mon, 23 Nov 2026 10:02:10 +0000 (UTC)

Final-Recipient: rfc822; {a}
Original-Recipient: rfc822;{a}
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.example.net
Diagnostic-Code: smtp; 550 5.1.1 <{a}>: Recipient address rejected: User
    unknown in virtual mailbox table

--4Xq1Zt0J3Bz9sQ.1732356131/mail.example.net
Content-Description: Undelivered Message
Content-Type: message/rfc822
Content-Transfer-Encoding: 8bit

Return-Path: <{s.verp(a)}>
From: Test Sender <sender@{DOMAIN}>
To: {a}
Subject: Spring picks
Message-ID: {s.mids[a]}
MIME-Version: 1.0
Content-Type: text/plain; charset="utf-8"

Hello!

--4Xq1Zt0J3Bz9sQ.1732356131/mail.example.net--
"""


def exchange_ndr(s: Sent) -> str:
    a = s.addr["exchange"]
    return f"""Received: from AM0PR01MB1234.eurprd01.prod.exchangelabs.com (2603:10a6:208::1)
 by AM0PR01MB1234.eurprd01.prod.exchangelabs.com; Mon, 23 Nov 2026 10:05:00 +0000
From: postmaster@contoso.example
To: <sender@{DOMAIN}>
Date: Mon, 23 Nov 2026 10:05:00 +0000
Content-Type: multipart/report; report-type=delivery-status;
	boundary="6e2b8c4d-0b1a-4c2e-9f1a-1d2c3b4a5e6f"
X-MS-Exchange-Message-Is-Ndr:
Content-Language: en-US
Message-ID: <6e2b8c4d-0b1a-4c2e-9f1a-1d2c3b4a5e6f@AM0PR01MB1234.eurprd01.prod.exchangelabs.com>
In-Reply-To: {s.mids[a]}
References: {s.mids[a]}
Subject: Undeliverable: Spring picks
MIME-Version: 1.0

--6e2b8c4d-0b1a-4c2e-9f1a-1d2c3b4a5e6f
Content-Type: multipart/alternative; differences=Content-Type;
	boundary="d5a9c8b7-1e2f-4a3b-8c9d-0e1f2a3b4c5d"

--d5a9c8b7-1e2f-4a3b-8c9d-0e1f2a3b4c5d
Content-Type: text/plain; charset="us-ascii"

Your message to {a} couldn't be delivered.
j.doe wasn't found at contoso.example.
sender  Office 365  j.doe
Action Required  Recipient
Unknown To address

Diagnostic information for administrators:
Generating server: AM0PR01MB1234.eurprd01.prod.exchangelabs.com
{a}
Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup'

--d5a9c8b7-1e2f-4a3b-8c9d-0e1f2a3b4c5d
Content-Type: text/html; charset="us-ascii"

<html><body><p>Your message to {a} couldn't be delivered.</p></body></html>

--d5a9c8b7-1e2f-4a3b-8c9d-0e1f2a3b4c5d--

--6e2b8c4d-0b1a-4c2e-9f1a-1d2c3b4a5e6f
Content-Type: message/delivery-status

Reporting-MTA: dns;AM0PR01MB1234.eurprd01.prod.exchangelabs.com
Received-From-MTA: dns;mail.mailcast.example
Arrival-Date: Mon, 23 Nov 2026 10:04:58 +0000

Final-Recipient: rfc822;{a}
Action: failed
Status: 5.1.10
Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup
X-Display-Name: John Doe

--6e2b8c4d-0b1a-4c2e-9f1a-1d2c3b4a5e6f
Content-Type: text/rfc822-headers

Received: from mail.mailcast.example (203.0.113.9) by AM0PR01MB1234.mail.protection.outlook.com
From: Test Sender <sender@{DOMAIN}>
To: {a}
Subject: Spring picks
Date: Mon, 23 Nov 2026 10:04:57 +0000
Message-ID: {s.mids[a]}
MIME-Version: 1.0

--6e2b8c4d-0b1a-4c2e-9f1a-1d2c3b4a5e6f--
"""


def gmail_dsn(s: Sent) -> str:
    a = s.addr["gmail"]
    return f"""Delivered-To: {s.verp(a)}
Return-Path: <>
Received: by mail-sor-f69.google.com with SMTP id a640c23a62f3a-a9a1b2c3d4e5so123456766b.2
        for <{s.verp(a)}>; Mon, 23 Nov 2026 02:06:40 -0800 (PST)
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: {s.verp(a)}
Auto-Submitted: auto-replied
Subject: Delivery Status Notification (Failure)
References: {s.mids[a]}
In-Reply-To: {s.mids[a]}
X-Failed-Recipients: {a}
Message-ID: <6742a1f0.170a0220.2bd6f3.0001.GMR@mx.google.com>
Date: Mon, 23 Nov 2026 02:06:40 -0800 (PST)
MIME-Version: 1.0
Content-Type: multipart/report; boundary="000000000000a1b2c3d4e5f60708"; report-type=delivery-status

--000000000000a1b2c3d4e5f60708
Content-Type: multipart/related; boundary="000000000000a1b2c3d4e5f60709"

--000000000000a1b2c3d4e5f60709
Content-Type: multipart/alternative; boundary="000000000000a1b2c3d4e5f6070a"

--000000000000a1b2c3d4e5f6070a
Content-Type: text/plain; charset="UTF-8"


** Address not found **

Your message wasn't delivered to {a} because the address couldn't be found, or is unable to receive mail.

Learn more here: https://support.google.com/mail/?p=NoSuchUser

The response was:

The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces.

--000000000000a1b2c3d4e5f6070a--
--000000000000a1b2c3d4e5f60709--
--000000000000a1b2c3d4e5f60708
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com
Received-From-MTA: dns; mail.mailcast.example
Arrival-Date: Mon, 23 Nov 2026 02:06:39 -0800 (PST)
X-Original-Message-ID: {s.mids[a]}

Final-Recipient: rfc822; {a}
Action: failed
Status: 5.1.1
Remote-MTA: dns; gmail-smtp-in.l.google.com. (142.250.27.26, the server for the domain gmail.example.)
Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does not exist. Please try
 550-5.1.1 double-checking the recipient's email address for typos or
 550-5.1.1 unnecessary spaces. For more information, go to
 550 5.1.1  https://support.google.com/mail/?p=NoSuchUser a640c23a62f3a-a9a1b2c3d4e5si1234567 - gsmtp
Last-Attempt-Date: Mon, 23 Nov 2026 02:06:40 -0800 (PST)

--000000000000a1b2c3d4e5f60708
Content-Type: message/rfc822

Return-Path: <{s.verp(a)}>
Message-ID: {s.mids[a]}
From: Test Sender <sender@{DOMAIN}>
To: {a}
Subject: Spring picks

Hello!

--000000000000a1b2c3d4e5f60708--
"""


def qmail_full(s: Sent, a: str | None = None) -> str:
    """An old plain-text bounce (no RFC 3464 part): 452 mailbox full, the original quoted."""
    a = a or s.addr["qmail"]
    return f"""Return-Path: <>
Received: (qmail 31337 invoked for bounce); 23 Nov 2026 10:10:00 -0000
Date: 23 Nov 2026 10:10:00 -0000
From: MAILER-DAEMON@mx.example.org
To: sender@{DOMAIN}
Subject: failure notice

Hi. This is the qmail-send program at mx.example.org.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{a}>:
Remote host said: 452 4.2.2 Mailbox full: user over quota

--- Below this line is a copy of the message.

Return-Path: <sender@{DOMAIN}>
Received: (qmail 31335 invoked from network); 23 Nov 2026 10:09:58 -0000
From: Test Sender <sender@{DOMAIN}>
To: {a}
Subject: Spring picks
Message-ID: {s.mids[a]}

Hello!
"""


def arf_complaint(s: Sent) -> str:
    a = s.addr["arf"]
    return f"""Return-Path: <feedback@arf.mail.yahoo.example>
From: Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.yahoo.example>
To: fbl@{DOMAIN}
Subject: FW: Spring picks
Date: Mon, 23 Nov 2026 11:00:00 +0000
Message-ID: <arf-0001.1732359600@arf.mail.yahoo.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
	boundary="----=_Part_123456_7890.1732359600"

------=_Part_123456_7890.1732359600
Content-Type: text/plain; charset=us-ascii
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message from mailcast.example on Mon, 23 Nov 2026 10:20:00 +0000

------=_Part_123456_7890.1732359600
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Yahoo!-Mail-Feedback/2.0
Version: 0.1
Original-Mail-From: <{s.verp(a)}>
Original-Rcpt-To: <{a}>
Received-Date: Mon, 23 Nov 2026 10:20:00 +0000
Reported-Domain: {DOMAIN}
Authentication-Results: mta1000.mail.yahoo.example from={DOMAIN}; domainkeys=neutral (no sig); from={DOMAIN}; dkim=pass (ok)

------=_Part_123456_7890.1732359600
Content-Type: message/rfc822

Return-Path: <{s.verp(a)}>
Message-ID: {s.mids[a]}
From: Test Sender <sender@{DOMAIN}>
To: {a}
Subject: Spring picks
List-Unsubscribe: <https://t.{DOMAIN}/u/{tokens.make(SECRET, tokens.UNSUBSCRIBE, s.ids[a])}>

Hello!

------=_Part_123456_7890.1732359600--
"""


def delayed_dsn(s: Sent) -> str:
    a = s.addr["delayed"]
    return f"""From: MAILER-DAEMON@relay.example.com (Mail Delivery System)
To: {s.verp(a)}
Subject: Delayed Mail (still being retried)
Date: Mon, 23 Nov 2026 14:00:00 +0000
Message-ID: <20261123140000.ABCDEF@relay.example.com>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="DELAY"

--DELAY
Content-Type: text/plain

This is a delivery status notification, not a failure. Still trying.

--DELAY
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.com

Final-Recipient: rfc822; {a}
Action: delayed
Status: 4.4.7
Diagnostic-Code: X-Postfix; connect to mx.example.com[192.0.2.1]:25: Connection timed out
Will-Retry-Until: Thu, 26 Nov 2026 14:00:00 +0000

--DELAY--
"""


OUT_OF_OFFICE = f"""From: Quiet Person <fine@example.com>
To: sender@{DOMAIN}
Subject: Out of Office: Spring picks
Auto-Submitted: auto-replied
Message-ID: <ooo-1@example.com>
Date: Mon, 23 Nov 2026 10:30:00 +0000

I am out of the office until December.
"""

SOMEONE_ELSES = """From: MAILER-DAEMON@mx.other.example
To: news@other-sender.example
Subject: Undelivered Mail Returned to Sender
Message-ID: <not-ours-1@mx.other.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="X"

--X
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.other.example

Final-Recipient: rfc822; stranger@nowhere.example
Action: failed
Status: 5.1.1

--X--
"""


def fill_maildir(root: Path, s: Sent) -> dict[str, str]:
    """The reports as files in new/ (names as a Maildir delivery agent writes them)."""
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    reports = {
        "postfix": postfix_dsn(s), "exchange": exchange_ndr(s), "gmail": gmail_dsn(s),
        "qmail": qmail_full(s), "arf": arf_complaint(s), "delayed": delayed_dsn(s),
        "ooo": OUT_OF_OFFICE, "others": SOMEONE_ELSES,
    }  # fmt: skip
    for name, body in reports.items():  # each test's reports are new messages (own Message-ID)
        head, sep, rest = body.partition("\n\n")
        head = re.sub(r"(?im)^(Message-ID: <)", rf"\g<1>{s.run_id[:8]}.", head, count=1)
        reports[name] = head + sep + rest
    for i, body in enumerate(reports.values()):
        (root / "new" / f"17323{i:05d}.M{i}P4242.mx1.mailcast.example,S={len(body)}").write_text(
            body, encoding="utf-8"
        )
    return reports


def rows(url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    with Ledger(url).engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), params).mappings()]


# -- the parser on its own ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "words", "expected"),
    [
        ("5.1.1", 550, "user unknown", "hard"),
        ("5.1.10", 550, "RecipientNotFound", "hard"),
        ("5.2.1", 550, "account disabled", "hard"),
        ("5.4.4", 550, "no such domain", "hard"),
        ("5.2.2", 552, "mailbox full", "soft"),
        ("5.7.1", 554, "message rejected as spam", "soft"),
        ("4.2.2", 452, "mailbox full", "soft"),
        (None, 550, "No such user here", "hard"),
        (None, 552, "Mailbox full, try again later", "soft"),
        (None, 451, "greylisted", "soft"),
        (None, None, "user unknown", "hard"),
        (None, None, "something odd happened", "soft"),
    ],
)
def test_classify(status: str | None, code: int | None, words: str, expected: str) -> None:
    assert bounces.classify(status, code, words) == expected


def test_parse_reads_each_report_without_a_ledger(db_url: str) -> None:
    s = Sent(db_url)
    postfix = bounces.parse(postfix_dsn(s).encode(), SECRET)
    assert (postfix.outcome, postfix.status, postfix.code) == ("hard", "5.1.1", 550)
    assert postfix.token_delivery == s.ids[s.addr["postfix"]]
    assert postfix.recipients[0] == s.addr["postfix"] and postfix.reporter == "mail.example.net"
    exchange = bounces.parse(exchange_ndr(s).encode(), SECRET)
    assert (exchange.outcome, exchange.status, exchange.token_delivery) == ("hard", "5.1.10", None)
    assert exchange.mailcast_ids == [(s.run_id, s.ids[s.addr["exchange"]])]
    gmail = bounces.parse(gmail_dsn(s).encode(), SECRET)
    assert (gmail.outcome, gmail.status, gmail.code) == ("hard", "5.1.1", 550)
    qmail = bounces.parse(qmail_full(s).encode(), SECRET)
    assert (qmail.outcome, qmail.status, qmail.code) == ("soft", "4.2.2", 452)
    assert qmail.recipients == [s.addr["qmail"]]
    arf = bounces.parse(arf_complaint(s).encode(), SECRET)
    assert (arf.outcome, arf.feedback_type) == ("complaint", "abuse")
    assert arf.token_delivery == s.ids[s.addr["arf"]]
    assert bounces.parse(delayed_dsn(s).encode(), SECRET).outcome == "deferral"
    assert bounces.parse(OUT_OF_OFFICE.encode(), SECRET).outcome == "ignored"
    # without the secret the VERP token is not trusted: the Message-ID still identifies it
    blind = bounces.parse(postfix_dsn(s).encode(), None)
    assert blind.token_delivery is None and blind.mailcast_ids
    # an altered VERP token is not believed (the Message-ID still identifies the delivery)
    token = s.verp(s.addr["postfix"]).split("+", 1)[1].split("@")[0]
    altered = token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb")
    forged = bounces.parse(postfix_dsn(s).replace(token, altered).encode(), SECRET)
    assert forged.token_delivery is None and forged.mailcast_ids


# -- the mailbox into the ledger --------------------------------------------------------------


def test_a_maildir_of_reports_is_classified_recorded_suppressed_and_counted_once(
    tmp_path: Path, db_url: str
) -> None:
    s = Sent(db_url)
    maildir = tmp_path / "Maildir"
    fill_maildir(maildir, s)

    summary = process_mailbox(MaildirInbox(maildir), db_url, secret=SECRET)
    assert (summary.read, summary.recorded, summary.already, summary.ignored) == (8, 6, 0, 2)
    assert dict(summary.outcomes) == {
        "hard": 3, "soft": 1, "complaint": 1, "deferral": 1, "ignored": 2
    }  # fmt: skip
    assert summary.suppressed == 4  # three hard bounces and a complaint; one soft is not enough

    by_delivery = {
        r["delivery_id"]: r
        for r in rows(
            db_url, "SELECT delivery_id, kind, detail FROM events WHERE run_id = :r", r=s.run_id
        )
    }
    assert len(by_delivery) == 6

    def event(name: str) -> dict[str, Any]:
        e = by_delivery[s.ids[s.addr[name]]]
        detail = (
            e["detail"] if isinstance(e["detail"], dict) else __import__("json").loads(e["detail"])
        )
        return {"kind": e["kind"], **detail}

    assert event("postfix")["kind"] == "bounce" and event("postfix")["type"] == "hard"
    assert event("postfix")["status"] == "5.1.1" and event("postfix")["matched_by"] == "verp"
    assert event("exchange")["type"] == "hard" and event("exchange")["matched_by"] == "message-id"
    assert event("exchange")["status"] == "5.1.10"
    assert event("gmail")["type"] == "hard" and event("gmail")["code"] == 550
    assert event("qmail")["type"] == "soft" and event("qmail")["status"] == "4.2.2"
    assert event("qmail")["matched_by"] == "message-id"
    assert event("arf")["kind"] == "complaint" and event("arf")["feedback_type"] == "abuse"
    assert event("delayed")["kind"] == "deferral"
    assert s.ids[s.addr["quiet"]] not in by_delivery

    suppressed = {
        r["address_key"]: r["reason"]
        for r in rows(db_url, "SELECT address_key, reason FROM suppressions")
        if r["address_key"] in s.addr.values()
    }
    assert suppressed == {
        s.addr["postfix"]: "hard_bounce", s.addr["exchange"]: "hard_bounce",
        s.addr["gmail"]: "hard_bounce", s.addr["arf"]: "complaint",
    }  # fmt: skip

    # every message moved to .Processed (marked seen); the inbox is empty
    assert list((maildir / "new").iterdir()) == []
    processed = sorted((maildir / ".Processed" / "cur").iterdir())
    assert len(processed) == 8 and all(p.name.endswith(":2,S") for p in processed)
    outcomes = rows(  # this mailbox's (the Postgres ledger is shared with other tests)
        db_url,
        "SELECT outcome, COUNT(*) AS n FROM inbound_messages WHERE mailbox = :m GROUP BY outcome",
        m=MaildirInbox(maildir).name,
    )
    assert {r["outcome"]: r["n"] for r in outcomes} == {
        "hard": 3, "soft": 1, "complaint": 1, "deferral": 1, "ignored": 2
    }  # fmt: skip

    # a second run finds nothing; the same messages coming back (a move that failed, a copy)
    # are recognized and counted once
    again = process_mailbox(MaildirInbox(maildir), db_url, secret=SECRET)
    assert (again.read, again.recorded) == (0, 0)
    for p in processed:
        shutil.copy(p, maildir / "new" / p.name.split(":")[0])
    again = process_mailbox(MaildirInbox(maildir), db_url, secret=SECRET)
    assert (again.read, again.recorded, again.already, again.suppressed) == (8, 0, 8, 0)
    n_events = rows(db_url, "SELECT COUNT(*) AS n FROM events WHERE run_id = :r", r=s.run_id)
    assert n_events == [{"n": 6}]

    (summary_row,) = rows(db_url, "SELECT * FROM campaign_summary WHERE run_id = :r", r=s.run_id)
    assert {k: summary_row[k] for k in ("sent", "bounces", "hard_bounces", "soft_bounces",
                                        "complaints", "delivered")} == {
        "sent": 7, "bounces": 4, "hard_bounces": 3, "soft_bounces": 1, "complaints": 1,
        "delivered": 3,
    }  # fmt: skip
    assert summary_row["hard_bounce_rate"] == pytest.approx(3 / 7)
    assert summary_row["complaint_rate"] == pytest.approx(1 / 3)


def test_soft_bounces_suppress_after_n_in_a_row(tmp_path: Path, db_url: str) -> None:
    address = f"soft-{uuid.uuid4().hex[:6]}@example.org"  # no history in the shared database
    campaign = f"soft-{uuid.uuid4().hex[:6]}"
    for n in (1, 2, 3):
        s = Sent(db_url, [address], campaign)
        maildir = tmp_path / f"Maildir{n}"
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True)
        (maildir / "new" / f"m{n}").write_text(qmail_full(s, address), encoding="utf-8")
        summary = process_mailbox(MaildirInbox(maildir), db_url, secret=SECRET, soft_bounce_limit=3)
        assert summary.outcomes["soft"] == 1
        found = rows(
            db_url, "SELECT reason, source FROM suppressions WHERE address_key = :a", a=address
        )
        if n < 3:
            assert found == [], n
        else:
            assert found == [{"reason": "hard_bounce", "source": "3 soft bounces in a row"}]


def _smtp_run(db_url: str, spec: dict[str, Any] | None = None) -> tuple[str, dict[str, int], str]:
    """A run refused at SMTP time: an unknown user at RCPT, spam at DATA, a 4xx, one sent; the
    sender refused at MAIL and mailcast's own refusal (no SMTPUTF8), which are no bounces."""
    ledger = Ledger(db_url)
    tag = uuid.uuid4().hex[:6]
    run_id = ledger.create_run(f"smtp-{tag}", spec or {}, dry_run=False, transport=None)
    names = ("unknown", "spamtrap", "ok", "later", "sender", "local")
    addresses = [f"{n}-{tag}@example.com" for n in names]
    ledger.plan(run_id, [Recipient(i + 2, a, {}, None, a) for i, a in enumerate(addresses)])
    by_name = dict(zip(names, addresses, strict=True))
    claims = {c.address: c.id for c in claim_pending(ledger, run_id, 100)}
    ids = {n: claims[a] for n, a in by_name.items()}
    ledger.record(
        [
            Outcome(ids["unknown"], FAILED,
                    reason=f"hard bounce: 550 5.1.1 <{by_name['unknown']}>: user unknown (at RCPT)",
                    smtp_code=550, smtp_reply=f"5.1.1 <{by_name['unknown']}>: user unknown",
                    smtp_stage=SmtpStage.RCPT),
            Outcome(ids["spamtrap"], FAILED,
                    reason="rejected at DATA: 554 5.7.1 message rejected as spam",
                    smtp_code=554, smtp_reply="5.7.1 message rejected as spam",
                    smtp_stage=SmtpStage.DATA),
            Outcome(ids["ok"], SENT, smtp_code=250, smtp_stage=SmtpStage.DATA),
            Outcome(ids["later"], FAILED,
                    reason="temporary failure after 3 attempts: 451 try later", smtp_code=451,
                    smtp_stage=SmtpStage.RCPT),
            Outcome(ids["sender"], FAILED,
                    reason="rejected at MAIL: 550 5.1.1 sender unknown", smtp_code=550,
                    smtp_reply="5.1.1 sender unknown", smtp_stage=SmtpStage.MAIL),
            Outcome(ids["local"], FAILED,
                    reason="not sent: the server does not offer SMTPUTF8, needed for a non-ASCII"
                    " address"),
        ]
    )  # fmt: skip
    return run_id, ids, tag


def suppressed_with(db_url: str, tag: str) -> set[str]:
    found = rows(db_url, "SELECT address_key FROM suppressions")
    return {r["address_key"] for r in found if tag in r["address_key"]}


def test_smtp_time_rejections_become_hard_bounce_events_once(db_url: str) -> None:
    run_id, ids, tag = _smtp_run(db_url)
    assert record_smtp_bounces(db_url, run_id) == 2
    assert record_smtp_bounces(db_url, run_id) == 0  # once
    events = rows(
        db_url, "SELECT delivery_id, kind, detail FROM events WHERE run_id = :r", r=run_id
    )
    assert sorted(e["delivery_id"] for e in events) == sorted([ids["unknown"], ids["spamtrap"]])
    assert {e["kind"] for e in events} == {"bounce"}
    details = [e["detail"] if isinstance(e["detail"], dict) else json.loads(e["detail"])
               for e in events]  # fmt: skip
    assert {d["stage"] for d in details} == {"RCPT", "DATA"}
    (s,) = rows(
        db_url, "SELECT hard_bounces, failed FROM campaign_summary WHERE run_id = :r", r=run_id
    )
    assert (s["hard_bounces"], s["failed"]) == (2, 5)
    # by default, like the same code in a DSN: the recipient refused as unknown is suppressed,
    # the spam block is not (nor the sender refused at MAIL with the same 5.1.1)
    assert suppressed_with(db_url, tag) == {f"unknown-{tag}@example.com"}

    # the campaign turned it off: events only
    run_id, ids, tag = _smtp_run(db_url, {"suppress_smtp_bounces": False})
    assert record_smtp_bounces(db_url, run_id) == 2
    assert suppressed_with(db_url, tag) == set()
    run_id, ids, tag = _smtp_run(db_url, {"suppress_smtp_bounces": False})
    assert record_smtp_bounces(db_url, run_id, suppress=True) == 2  # the caller decides
    assert suppressed_with(db_url, tag) == {f"unknown-{tag}@example.com"}


@pytest.mark.usefixtures("prefect_harness")
def test_the_process_bounces_flow(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailcast.flows.bounces import process_bounces

    monkeypatch.setenv("MAILCAST_TRACKING_SECRET", SECRET.decode())
    monkeypatch.setenv("MAILCAST_DATABASE_URL", db_url)  # the worker's ledger
    s = Sent(db_url)
    maildir = tmp_path / "Maildir"
    fill_maildir(maildir, s)
    summary = process_bounces(maildir=str(maildir))
    assert (summary.read, summary.recorded, summary.ignored) == (8, 6, 2)
    assert s.run_id in summary.runs
    again = process_bounces(maildir=str(maildir))
    assert again.read == 0
    n = rows(db_url, "SELECT COUNT(*) AS n FROM events WHERE run_id = :r", r=s.run_id)
    assert n == [{"n": 6}]


# -- RFC 6533: reports about messages sent with SMTPUTF8 -----------------------------------------


def postfix_smtputf8_dsn(
    s: Sent, a: str, *, original: str = "full", status_encoding: str = "8bit"
) -> bytes:
    """A Postfix bounce of an SMTPUTF8 message: multipart/report; report-type=delivery-status
    with a message/global-delivery-status part and the original as message/global (``full``),
    its headers as message/global-headers (``headers``), or nothing (``none``). Sent to the
    campaign's plain sender (no VERP): only the returned Message-ID or the address tell which
    delivery it is about."""
    boundary = "4Yz0Qm5Kx2z1vN.1732441331/mail.example.net"
    status = f"""Reporting-MTA: dns; mail.example.net
X-Postfix-Queue-ID: 4Yz0Qm5Kx2z1vN
X-Postfix-Sender: rfc822; sender@{DOMAIN}
Arrival-Date: Tue, 24 Nov 2026 09:42:10 +0000 (UTC)

Final-Recipient: utf-8; {a}
Original-Recipient: utf-8;{a}
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.example.net
Diagnostic-Code: smtp; 550 5.1.1 <{a}>: Recipient address rejected: User unknown in
    virtual mailbox table
"""
    if status_encoding == "base64":
        body = base64.encodebytes(status.replace("\n", "\r\n").encode()).decode()
    else:
        body = status
    head = f"""Return-Path: <sender@{DOMAIN}>
From: Test Sender <sender@{DOMAIN}>
To: {a}
Subject: Grüße, {a.split("@")[0]}
Message-ID: {s.mids[a]}
MIME-Version: 1.0
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: 8bit
"""
    returned = {
        "full": "Content-Description: Undelivered Message\nContent-Type: message/global\n"
        f"Content-Transfer-Encoding: 8bit\n\n{head}\nHallo {a}!\n",
        "headers": "Content-Description: Undelivered Message Headers\n"
        f"Content-Type: message/global-headers\nContent-Transfer-Encoding: 8bit\n\n{head}",
        "none": None,
    }[original]
    text = f"""Return-Path: <>
Delivered-To: sender@{DOMAIN}
Received: by mail.example.net (Postfix) id 4Yz0Qm5Kx2z1vN; Tue, 24 Nov 2026 09:42:11 +0000 (UTC)
Date: Tue, 24 Nov 2026 09:42:11 +0000 (UTC)
From: MAILER-DAEMON@mail.example.net (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: sender@{DOMAIN}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"
Content-Transfer-Encoding: 8bit
Message-Id: <20261124094211.4Yz0Qm5Kx2z1vN.{uuid.uuid4().hex[:8]}@mail.example.net>

This is a MIME-encapsulated message.

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

This is the mail system at host mail.example.net.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

                   The mail system

<{a}>: host mx.example.net[198.51.100.9] said: 550
    5.1.1 <{a}>: Recipient address rejected: User unknown in virtual mailbox
    table (in reply to RCPT TO command)

--{boundary}
Content-Description: Delivery report
Content-Type: message/global-delivery-status
Content-Transfer-Encoding: {status_encoding}

{body}
"""
    if returned is not None:
        text += f"--{boundary}\n{returned}\n"
    text += f"--{boundary}--\n"
    return text.encode("utf-8")


UTF8_ADDRESSES = {
    "full": "jörg.müller@exämple.example",
    "headers": "zoë@bücher.example",
    "none": "łukasz@przykład.example",
    "base64": "андрей@пример.example",
}


@pytest.mark.parametrize(
    ("original", "encoding", "matched_by"),
    [
        ("full", "8bit", "message-id"),  # the original as message/global
        ("headers", "8bit", "message-id"),  # its headers as message/global-headers
        ("none", "8bit", "address"),  # nothing returned: the failed recipient's address
        ("base64", "base64", "message-id"),  # the status part base64-encoded
    ],
)
def test_rfc6533_bounces_of_smtputf8_messages(
    tmp_path: Path, db_url: str, original: str, encoding: str, matched_by: str
) -> None:
    """Issue 11: Postfix reports a failure of an SMTPUTF8 message with the RFC 6533 types; they
    are read like their ASCII counterparts: a hard bounce on the right delivery, suppressed."""
    tag = uuid.uuid4().hex[:6]
    address = UTF8_ADDRESSES[original].replace("@", f"{tag}@")
    others = [f"other{i}-{tag}@example.com" for i in range(2)]
    s = Sent(db_url, addresses=[others[0], address, others[1]])
    data = postfix_smtputf8_dsn(
        s, address, original="full" if original == "base64" else original,
        status_encoding=encoding,
    )  # fmt: skip

    report = bounces.parse(data)  # no secret: no VERP to go by
    assert (report.outcome, report.status, report.code) == ("hard", "5.1.1", 550)
    assert report.recipients[:1] == [address]
    expected_ids = [] if original == "none" else [(s.run_id, s.ids[address])]
    assert report.mailcast_ids == expected_ids

    maildir = tmp_path / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / f"1732441331.M1P4242.mx1.{tag}").write_bytes(data)
    summary = process_mailbox(MaildirInbox(maildir), db_url, secret=SECRET)
    assert (summary.read, summary.recorded, summary.ignored, summary.suppressed) == (1, 1, 0, 1)
    assert dict(summary.outcomes) == {"hard": 1}

    (event,) = rows(
        db_url, "SELECT delivery_id, kind, detail FROM events WHERE run_id = :r", r=s.run_id
    )
    detail = event["detail"] if isinstance(event["detail"], dict) else json.loads(event["detail"])
    assert event["delivery_id"] == s.ids[address] and event["kind"] == "bounce"
    assert (detail["type"], detail["status"], detail["matched_by"]) == ("hard", "5.1.1", matched_by)
    assert detail["recipient"] == address
    found = rows(
        db_url, "SELECT reason, source, delivery_id FROM suppressions WHERE address_key = :a",
        a=address.lower(),
    )  # fmt: skip
    assert found == [{"reason": "hard_bounce", "source": "dsn", "delivery_id": s.ids[address]}]


def test_rfc6533_xtext_address_in_an_ascii_report() -> None:
    """A UTF-8 address in a plain message/delivery-status part comes as RFC 6533 xtext."""
    data = (
        b"From: MAILER-DAEMON@mail.example.net\nTo: sender@mailcast.example\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        b"--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mail.example.net\n\n"
        b"Final-Recipient: utf-8; j\\x{F6}rg@ex\\x{E4}mple.example\nAction: failed\n"
        b"Status: 5.1.1\n\n--b--\n"
    )
    report = bounces.parse(data)
    assert (report.outcome, report.recipients) == ("hard", ["jörg@exämple.example"])


def test_an_unsubscribe_request_by_mail_unsubscribes(tmp_path: Path, db_url: str) -> None:
    """The List-Unsubscribe mailto link: ``Subject: unsubscribe TOKEN`` to unsubscribe_mailto."""
    s = Sent(db_url)
    a = s.addr["quiet"]
    token = tokens.make(SECRET, tokens.UNSUBSCRIBE, s.ids[a])
    maildir = tmp_path / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    request = (
        f"From: {a}\nTo: unsubscribe@{DOMAIN}\nSubject: unsubscribe {token}\n"
        f"Message-ID: <unsub-{s.run_id}@example.com>\n\n"
    )
    (maildir / "new" / "u1").write_text(request, encoding="utf-8")
    forged = request.replace(token, token[:-4] + "aaaa").replace("<unsub-", "<forged-")
    (maildir / "new" / "u2").write_text(forged, encoding="utf-8")
    summary = process_mailbox(MaildirInbox(maildir), db_url, secret=SECRET)
    assert dict(summary.outcomes) == {"unsubscribe": 1, "ignored": 1}
    found = rows(db_url, "SELECT reason, source FROM suppressions WHERE address_key = :a", a=a)
    assert found == [{"reason": "unsubscribed", "source": "mailto"}]
    kinds = rows(db_url, "SELECT kind FROM events WHERE run_id = :r", r=s.run_id)
    assert kinds == [{"kind": "unsubscribe"}]

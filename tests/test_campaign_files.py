"""Files outside the campaign (issue 11 §4): every file a campaign reads resolves, symlinks
followed, inside its folder, and the folder inside the campaign roots; /proc, /sys and /dev never.
Refused with one line naming the field and the path, before anything is planned or sent."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from mailcast.capture import CaptureServer
from mailcast.cli import app
from mailcast.compose.mime import MessageBuilder
from mailcast.compose.templates import CampaignTemplates
from mailcast.errors import AttachmentError, MailcastError, SourceError, SpecError, TemplateError
from mailcast.ledger.store import Ledger
from mailcast.recipients.prepare import checked_recipients
from mailcast.recipients.sources import read_columns
from mailcast.settings import Settings
from mailcast.spec import CampaignSpec, load_spec, spec_from_dict
from tests.campaigns import people, write_campaign
from tests.test_bad_input import refused, send

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def server() -> Any:
    with CaptureServer() as smtp:
        yield smtp


@pytest.fixture
def default_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MAILCAST_CAMPAIGN_ROOTS: the defaults apply."""
    monkeypatch.delenv("MAILCAST_CAMPAIGN_ROOTS", raising=False)


def check_everything(spec: CampaignSpec) -> None:
    """What a run does with the spec's files before planning: templates, attachments, header."""
    columns = read_columns(spec.recipients, spec.base_dir)
    CampaignTemplates(spec, columns)
    MessageBuilder(spec)
    with checked_recipients(spec) as checked:
        checked.table()


# -- the examples of the issue, through the CLI ---------------------------------------------------


def edit_spec(spec: Path, **changes: Any) -> Path:
    data = yaml.safe_load(spec.read_text(encoding="utf-8"))
    data.update(changes)
    spec.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return spec


@pytest.mark.parametrize("roots", ["default", "/"])
def test_base_dir_proc_self_never_mails_the_environment(
    tmp_path: Path, server: CaptureServer, monkeypatch: pytest.MonkeyPatch, roots: str
) -> None:
    """`base_dir: /proc/self` with `attachments: [environ]`: refused (even with `/` as a root),
    naming base_dir; nothing planned or sent."""
    if roots == "default":
        monkeypatch.delenv("MAILCAST_CAMPAIGN_ROOTS")
    else:
        monkeypatch.setenv("MAILCAST_CAMPAIGN_ROOTS", roots)
    spec = write_campaign(tmp_path / "c", people(3), attachments=False)
    # a recipients file and templates under /proc/self are not needed: the folder is refused
    edit_spec(
        spec, base_dir="/proc/self", attachments=["environ"], html=None, text="Hi {{ email }}\n"
    )
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    line = refused(send(spec, server, db), server, db)
    assert line.startswith("base_dir: the campaign folder /proc/self"), line
    assert "/proc" in line


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("text", "/proc/self/environ"),
        ("html", "../../../../etc/passwd"),
        ("text", "../outside.txt"),
        ("html", "templates/link.html"),  # a symlink to a file outside
    ],
)
def test_template_paths_outside_the_campaign_are_refused(
    tmp_path: Path, server: CaptureServer, field: str, value: str
) -> None:
    folder = tmp_path / "c"
    spec = write_campaign(folder, people(3), attachments=False)
    (tmp_path / "outside.txt").write_text("secret {{ email }}", encoding="utf-8")
    (folder / "templates" / "link.html").symlink_to(tmp_path / "outside.txt")
    edit_spec(spec, **{field: value})
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    line = refused(send(spec, server, db), server, db)
    assert line.startswith(f"{value}: `{field}`: the file is outside the campaign folder"), line


@pytest.mark.parametrize("path", ["../other/people.csv", "data/link.csv", "/etc/passwd.csv"])
def test_recipient_files_outside_the_campaign_are_refused(
    tmp_path: Path, server: CaptureServer, path: str
) -> None:
    """Reading even the header of a file outside would show its first line in the error."""
    folder = tmp_path / "c"
    spec = write_campaign(folder, people(3), attachments=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "people.csv").write_text("secret,header\n1,2\n", encoding="utf-8")
    (folder / "data" / "link.csv").symlink_to(tmp_path / "other" / "people.csv")
    edit_spec(spec, recipients={"path": path})
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    line = refused(send(spec, server, db), server, db)
    assert line.startswith(f"{path}: `recipients.path`: the file is outside the campaign"), line
    assert "secret" not in line


def test_every_kind_of_file_is_confined_in_the_library(tmp_path: Path) -> None:
    """The same checks where each file is read: templates (TemplateError), attachments
    (AttachmentError), recipient files (SourceError), each naming the path as written."""
    folder = tmp_path / "c"
    write_campaign(folder, people(2))
    base = {"name": "t", "sender": "s@example.com", "subject": "hi", "base_dir": str(folder),
            "text": "templates/body.txt.j2", "recipients": {"path": "data/recipients.csv"}}  # fmt: skip
    check_everything(spec_from_dict(base))  # the campaign itself is fine
    cases: list[tuple[dict[str, Any], type[MailcastError], str]] = [
        ({"text": "/etc/hostname"}, TemplateError, "/etc/hostname"),
        ({"attachments": ["/etc/hostname"]}, AttachmentError, "/etc/hostname"),
        ({"attachments": ["../../x"]}, AttachmentError, "../../x"),
        ({"recipients": {"path": "/etc/x.csv"}}, SourceError, "/etc/x.csv"),
        ({"base_dir": "/proc/self", "text": "environ"}, SpecError, "base_dir"),
        ({"base_dir": "/sys/kernel", "text": "x"}, SpecError, "base_dir"),
        ({"base_dir": "/dev", "attachments": ["stdin"]}, SpecError, "base_dir"),
        ({"base_dir": str(tmp_path.parent)}, SpecError, "base_dir"),  # above the root
    ]
    for change, error, where in cases:
        with pytest.raises(error) as info:
            check_everything(spec_from_dict({**base, **change}))
        assert info.value.where == where, (change, info.value)


# -- the roots ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("default_roots")
def test_default_roots_take_the_folder_a_spec_was_loaded_from(tmp_path: Path) -> None:
    spec_path = write_campaign(tmp_path / "c", people(2))
    check_everything(load_spec(spec_path))
    result = runner.invoke(app, ["validate", str(spec_path)])
    assert result.exit_code == 0, result.output


@pytest.mark.usefixtures("default_roots")
def test_default_roots_refuse_a_folder_given_in_a_flow_parameter(tmp_path: Path) -> None:
    """A spec from the Prefect UI (a dict, not a file this process loaded) naming a folder that
    is not under a root is refused, naming base_dir and the folder."""
    folder = tmp_path / "elsewhere"
    write_campaign(folder, people(2))
    data = yaml.safe_load((folder / "spec.yaml").read_text(encoding="utf-8"))
    spec = spec_from_dict({**data, "base_dir": str(folder)})
    with pytest.raises(SpecError) as info:
        check_everything(spec)
    assert info.value.where == "base_dir"
    assert str(folder) in info.value.message and "campaign roots" in info.value.message
    assert "MAILCAST_CAMPAIGN_ROOTS" in info.value.hint


@pytest.mark.usefixtures("default_roots")
def test_default_roots_hold_the_prefect_yaml_deployment_and_the_example(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The send-campaign deployment's spec (base_dir `deployments/example`, relative to the
    working directory) and the example campaign (`mailcast demo`, `mailcast validate`)."""
    monkeypatch.chdir(REPO)
    deployment = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    (send,) = [d for d in deployment["deployments"] if d["name"] == "send-campaign"]
    params = dict(send["parameters"]["spec"])
    params["subject"] = params["subject"].replace("{{ (first_name) }}", "{{ first_name }}")
    check_everything(spec_from_dict(params))
    example = REPO / "deployments" / "example" / "campaign.yaml"
    result = runner.invoke(app, ["validate", str(example)])
    assert result.exit_code == 0, result.output


def test_configured_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MAILCAST_CAMPAIGN_ROOTS lists folders (separated by `:`, or a JSON list); a campaign
    given as a flow parameter (a dict) anywhere under one is accepted, elsewhere refused; a
    spec file loaded by this process adds its own folder."""
    a, b = tmp_path / "a", tmp_path / "b"
    spec_a = write_campaign(a / "camp", people(2))
    write_campaign(b / "camp", people(2))
    data = yaml.safe_load(spec_a.read_text(encoding="utf-8"))
    monkeypatch.setenv("MAILCAST_CAMPAIGN_ROOTS", f"{tmp_path / 'nothing'}{os.pathsep}{a}")
    check_everything(spec_from_dict({**data, "base_dir": str(a / "camp")}))
    with pytest.raises(SpecError, match="outside the campaign roots"):
        check_everything(spec_from_dict({**data, "base_dir": str(b / "camp")}))
    monkeypatch.setenv("MAILCAST_CAMPAIGN_ROOTS", f'["{b}"]')
    check_everything(spec_from_dict({**data, "base_dir": str(b / "camp")}))
    monkeypatch.setenv("MAILCAST_CAMPAIGN_ROOTS", str(tmp_path / "nothing"))
    check_everything(load_spec(spec_a))  # the CLI on a spec file: its folder
    with pytest.raises(SpecError, match="outside the campaign roots"):  # but not its parent
        check_everything(spec_from_dict({**data, "base_dir": str(a)}))


@pytest.mark.usefixtures("prefect_harness", "default_roots")
def test_flow_from_the_ui_refuses_proc_before_planning(
    tmp_path: Path, server: CaptureServer
) -> None:
    """Started without the CLI (a deployment run from the UI): refused before the run is
    planned; nothing sent."""
    from mailcast.flows.campaign import send_campaign

    spec = {"name": "t", "sender": "s@example.com", "subject": "hi", "text": "Hi {{ email }}\n",
            "base_dir": "/proc/self", "attachments": ["environ"],
            "recipients": {"sql": {"url": f"sqlite:///{tmp_path / 'crm.db'}",
                                   "query": "select 'a@example.com' as email"}}}  # fmt: skip
    with pytest.raises(SpecError, match=r"base_dir: the campaign folder /proc/self"):
        send_campaign(spec=spec_from_dict(spec), dry_run=False, smtp_url=server.url)
    assert server.messages == []
    assert Ledger(Settings().ledger_url()).runs() == []  # the worker's ledger

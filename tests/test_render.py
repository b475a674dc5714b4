"""mailcast.compose.templates: compiling, checking and rendering a campaign's templates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailcast.compose.templates import CampaignTemplates, Rendered, check_templates, looks_inline
from mailcast.errors import SpecError, TemplateError
from mailcast.recipients import Recipient
from mailcast.spec import CampaignSpec

COLUMNS = ["email", "first_name", "First Name", "plan"]


def make_spec(tmp_path: Path, **overrides: Any) -> CampaignSpec:
    data: dict[str, Any] = {
        "name": "june",
        "sender": "Acme <news@acme.example>",
        "subject": "Hello {{ first_name }}",
        "text": "Hi {{ first_name }},\nyour plan: {{ plan }}\n",
        "recipients": {"path": "people.csv"},
        "base_dir": str(tmp_path),
    }
    data.update(overrides)
    return CampaignSpec.model_validate(data)


def person(**fields: Any) -> Recipient:
    values = {"email": "zoe@example.com", "first_name": "Zoë", "First Name": "Zoë", "plan": "pro"}
    values.update(fields)
    return Recipient(row=7, address="zoe@example.com", fields=values)


def test_renders_every_part(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        html="<p>Hi {{ first_name }}</p>\n",
        headers={"X-Plan": "{{ plan }}", "X-Static": "fixed"},
    )
    templates = CampaignTemplates(spec, COLUMNS)
    rendered = templates.render(person())
    assert rendered == Rendered(
        to_name=None,
        subject="Hello Zoë",
        html="<p>Hi Zoë</p>\n",
        text="Hi Zoë,\nyour plan: pro\n",
        headers={"X-Plan": "pro", "X-Static": "fixed"},
    )
    assert templates.templated_headers == ["X-Plan"]
    assert set(templates.names) == {"subject", "html", "text", "header X-Plan"}


def test_builtins_and_non_identifier_columns(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        subject='{{ recipient["First Name"] }} / {{ campaign }}',
        text="{{ email }} row {{ row }} [{{ unsubscribe_url }}] [{{ message_id }}]\n",
    )
    templates = CampaignTemplates(spec, COLUMNS)
    rendered = templates.render(person())
    assert rendered.subject == "Zoë / june"
    assert rendered.text == "zoe@example.com row 7 [] []\n"
    rendered = templates.render(person(), {"unsubscribe_url": "https://u/1", "message_id": "<a@b>"})
    assert rendered.text == "zoe@example.com row 7 [https://u/1] [<a@b>]\n"


def test_to_name_from_name_column(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, recipients={"path": "p.csv", "name_column": "First Name"})
    templates = CampaignTemplates(spec, COLUMNS)
    assert templates.render(person()).to_name == "Zoë"
    assert templates.render(person(**{"First Name": "  "})).to_name is None
    assert templates.render(person(**{"First Name": None})).to_name is None
    assert templates.render(person(**{"First Name": float("nan")})).to_name is None


def test_to_name_from_a_template(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path, recipients={"path": "p.csv", "name_column": "{{ first_name }} ({{ plan }})"}
    )
    assert CampaignTemplates(spec, COLUMNS).render(person()).to_name == "Zoë (pro)"


def test_unknown_name_column(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, recipients={"path": "p.csv", "name_column": "nom"})
    with pytest.raises(SpecError) as info:
        CampaignTemplates(spec, COLUMNS)
    assert info.value.where == "recipients.name_column"


def test_autoescape_in_html_only(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        subject="{{ plan }}",
        html="<p>{{ plan }}</p>\n",
        text="{{ plan }}\n",
        headers={"X-Plan": "{{ plan }}"},
    )
    rendered = CampaignTemplates(spec, COLUMNS).render(person(plan="<b>gold</b> & co"))
    assert rendered.html == "<p>&lt;b&gt;gold&lt;/b&gt; &amp; co</p>\n"
    assert rendered.text == "<b>gold</b> & co\n"
    assert rendered.subject == "<b>gold</b> & co"
    assert rendered.headers["X-Plan"] == "<b>gold</b> & co"


def test_inline_vs_path_detection(tmp_path: Path) -> None:
    assert looks_inline("Hi\n")
    assert looks_inline("{{ x }}")
    assert looks_inline("{% if x %}y{% endif %}")
    assert looks_inline("<p>hi</p>")
    assert not looks_inline("templates/body.html")

    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "body.html").write_text("<p>{{ first_name }}</p>\n", encoding="utf-8")
    (folder / "body.txt").write_text("Hi {{ first_name }}\n", encoding="utf-8")
    spec = make_spec(tmp_path, html="templates/body.html", text="templates/body.txt")
    templates = CampaignTemplates(spec, COLUMNS)
    rendered = templates.render(person())
    assert rendered.html == "<p>Zoë</p>\n"
    assert rendered.text == "Hi Zoë\n"
    assert "body.html" in templates.names
    assert check_templates(spec, COLUMNS) == templates.names


def test_missing_template_file(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, html="templates/missing.html")
    with pytest.raises(TemplateError) as info:
        CampaignTemplates(spec, COLUMNS)
    assert "template file not found" in str(info.value)
    assert info.value.where is not None
    assert info.value.where.endswith("missing.html")


def test_file_template_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "body.txt").write_text("line one\nline two\n{{ nope }}\n", encoding="utf-8")
    spec = make_spec(tmp_path, text="body.txt")
    with pytest.raises(TemplateError) as info:
        CampaignTemplates(spec, COLUMNS)
    assert info.value.where == "body.txt:3"


def test_syntax_error_names_template_and_line(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, html="<p>\n{% if first_name %}\nHi\n")
    with pytest.raises(TemplateError) as info:
        CampaignTemplates(spec, COLUMNS)
    assert info.value.where is not None
    assert info.value.where.startswith("html:")
    assert "endif" in info.value.message or "end of template" in info.value.message

    spec = make_spec(tmp_path, text="ok\nok\n{{ first_name + }}\n")
    with pytest.raises(TemplateError) as info:
        CampaignTemplates(spec, COLUMNS)
    assert info.value.where == "text:3"


def test_unknown_variable_at_construction(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path, text="Hi {{ first_name }}\n\n{% if vip %}\nVIP {{ vip }}\n{% endif %}\n"
    )
    with pytest.raises(TemplateError) as info:
        CampaignTemplates(spec, COLUMNS)
    assert info.value.where == "text:3"
    assert info.value.message == (
        "variable `vip` is not a column of the recipient data"
        " (columns: email, first_name, First Name, plan)"
    )


def test_unknown_variable_in_subject_and_header(tmp_path: Path) -> None:
    with pytest.raises(TemplateError) as info:
        CampaignTemplates(make_spec(tmp_path, subject="Hi {{ firstname }}"), COLUMNS)
    assert info.value.where == "subject:1"
    spec = make_spec(tmp_path, headers={"X-Id": "{{ plan }}-{{ customer_id }}"})
    with pytest.raises(TemplateError) as info:
        CampaignTemplates(spec, COLUMNS)
    assert info.value.where == "header X-Id:1"
    assert "customer_id" in info.value.message


def test_locally_assigned_names_and_globals_are_fine(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        text="{% set greeting = 'Hi' %}{% for i in range(2) %}{{ greeting }} {{ i }}\n{% endfor %}",
    )
    assert CampaignTemplates(spec, COLUMNS).render(person()).text == "Hi 0\nHi 1\n"


def test_unknown_filter_at_construction(tmp_path: Path) -> None:
    with pytest.raises(TemplateError) as info:
        CampaignTemplates(make_spec(tmp_path, text="a\n{{ plan | shout }}\n"), COLUMNS)
    assert info.value.where == "text:2"
    assert "shout" in info.value.message


def test_strict_undefined_at_render_names_template_line_and_row(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, text="Hi\n{{ recipient['missing'] }}\n")
    templates = CampaignTemplates(spec, COLUMNS)
    with pytest.raises(TemplateError) as info:
        templates.render(person())
    assert info.value.where == "text:2"
    assert "row 7" in info.value.message
    assert "missing" in info.value.message


def test_runtime_error_in_filter(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, subject="{{ plan }}", text="a\nb\n{{ 10 // plan }}\n")
    with pytest.raises(TemplateError) as info:
        CampaignTemplates(spec, COLUMNS).render(person(plan=0))
    assert info.value.where == "text:3"
    assert "row 7" in info.value.message


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ recipient.__class__ }}",
        "{{ ''['__class__'] }}",
        "{{ (''|attr('__class__')).__mro__ }}",
        "{{ range.__globals__ }}",
        "{{ '{0.__class__}'.format(first_name) }}",
        "{{ '{email.__class__}'.format_map(recipient) }}",
        "{% include '/etc/passwd' %}",
        "{% import '/etc/passwd' as x %}",
        "{% extends '/etc/passwd' %}",
        "{{ 'x' * 100000000 }}",
        "{{ 2 ** 100000000 }}",
        "{{ recipient.clear() }}",
    ],
)
def test_sandbox_blocks_hostile_templates(tmp_path: Path, source: str) -> None:
    spec = make_spec(tmp_path, text=source + "\n")
    with pytest.raises(TemplateError) as info:
        CampaignTemplates(spec, COLUMNS).render(person())
    assert info.value.where is not None
    assert info.value.where.startswith("text")

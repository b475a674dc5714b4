"""Templates that try to exhaust the worker (issue 11 §4): each fails within about 5 s and a few
hundred MB, with a TemplateError naming the template and line. Measured with tracemalloc (every
allocation of the render, the huge integers and strings included) and the clock."""

from __future__ import annotations

import re
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailcast.compose.templates import CampaignTemplates, _make_env
from mailcast.errors import TemplateError
from mailcast.recipients import Recipient
from mailcast.spec import spec_from_dict

pytestmark = pytest.mark.serial  # timing figures (or a Postgres restart): alone

COLUMNS = ["email", "notes"]
SECONDS = 5.0
PEAK_BYTES = 300 * 1024 * 1024
TWENTY_MILLION = "x " * 10_000_000  # a huge string from recipient data (20,000,000 characters)
HYPOTHESIS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def render(source: str, notes: str = "n") -> tuple[Callable[[], str], str]:
    spec = spec_from_dict(
        {"name": "t", "sender": "s@example.com", "subject": "hi", "text": source,
         "recipients": {"path": "x.csv"}, "base_dir": str(Path.cwd())}
    )  # fmt: skip
    recipient = Recipient(7, "z@example.com", {"email": "z@example.com", "notes": notes})

    def run() -> str:
        text = CampaignTemplates(spec, COLUMNS).render(recipient).text
        assert text is not None
        return text

    return run, source


def measured(run: Callable[[], str]) -> tuple[str | TemplateError, float, int]:
    """The result (or the TemplateError), the seconds taken and the peak of traced memory."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        result: str | TemplateError = run()
    except TemplateError as exc:
        result = exc
    finally:
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return result, elapsed, peak


def refused(source: str, notes: str = "n") -> TemplateError:
    run, _ = render(source, notes)
    result, elapsed, peak = measured(run)
    assert isinstance(result, TemplateError), f"rendered: {str(result)[:80]!r}"
    assert elapsed < SECONDS, f"{elapsed:.1f}s"
    assert peak < PEAK_BYTES, f"{peak / 1e6:.0f} MB"
    assert result.where is not None and re.fullmatch(r"text:\d+", result.where), result.where
    assert "row 7" in str(result)
    return result


TWENTY_MILLION_IN_TEMPLATE = (
    "{% set s = 'x' * 1000000 %}{% set s = " + " ~ ".join(["s"] * 20) + " %}"
)


@pytest.mark.parametrize(
    "source",
    [
        # the examples of issue 11
        "{{ ((9**999)**999)**999 }}",
        "{{ '{:>{w}}'.format('x', w=10**9) }}",
        "{{ ('x' * 5000000) | list | length }}",
        # variants: built-in filters looping over a 20,000,000-character string
        TWENTY_MILLION_IN_TEMPLATE + "{{ s | list | length }}",
        TWENTY_MILLION_IN_TEMPLATE + "{{ s | map('upper') | list | length }}",
        TWENTY_MILLION_IN_TEMPLATE + "{{ s | batch(3) | list | length }}",
        TWENTY_MILLION_IN_TEMPLATE + "{{ s | slice(3) | list | length }}",
        TWENTY_MILLION_IN_TEMPLATE + "{{ s | unique | list | length }}",
        TWENTY_MILLION_IN_TEMPLATE + "{{ s | sort | length }}",
        TWENTY_MILLION_IN_TEMPLATE + "{{ s | wordcount }}",
        TWENTY_MILLION_IN_TEMPLATE + "{{ s.split() | length }}",
        # the same through nested format specs and numbers
        "{{ '{0:>{1}}'.format('x', 10**9) }}",
        "{{ '{:{w}.{p}f}'.format(1.5, w=5, p=10**9) }}",
        "{{ '{x:>{w}}'.format_map({'x': 'y', 'w': 10**9}) }}",
        "{{ (9**999) * (9**999) * (9**999) * (9**999) * (9**999) * (9**999) * (9**999)"
        " * (9**999) * (9**999) * (9**999) * (9**999) * (9**999) * (9**999) * (9**999)"
        " * (9**999) * (9**999) * (9**999) * (9**999) * (9**999) * (9**999) * (9**999)"
        " * (9**999) * (9**999) * (9**999) * (9**999) * (9**999) * (9**999) * (9**999)"
        " * (9**999) * (9**999) * (9**999) * (9**999) * (9**999) * (9**999) * (9**999) }}",
        "{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}"
        "{% endfor %}{{ ns.n }}",
        "{{ range(10) | slice(10**8) | list | length }}",
        "{{ [1] | batch(10**9, 0) | list | length }}",
        "{{ range(100000) | map('string') | map('upper') | map('lower') | list | length }}",
    ],
)
def test_issue_examples_fail_fast_and_small(source: str) -> None:
    refused("\n" + source + "\n")  # the line reported is the template's line 2


@pytest.mark.parametrize(
    "source",
    [
        "{{ notes | list | length }}",
        "{{ notes | map('upper') | list | length }}",
        "{{ notes | batch(2) | list | length }}",
        "{{ notes | wordcount }}",
        "{{ notes.split() | length }}",
        "{{ notes | urlize }}",
        "{{ notes | wordwrap(1) }}",
    ],
)
def test_a_huge_string_from_recipient_data_is_refused(source: str) -> None:
    error = refused(source, TWENTY_MILLION)
    assert error.where == "text:1"


def test_every_builtin_filter_on_a_huge_value_is_bounded() -> None:
    """Each built-in filter on 20,000,000 characters, and on a 20,000,000-item range: refused or
    done within the bounds (a few filters, such as `length`, are cheap on any input)."""
    names = sorted(_make_env(autoescape=False).filters)
    assert {"map", "batch", "list", "wordcount", "urlize"} <= set(names)
    for name in names:
        for value, notes in (("notes", TWENTY_MILLION), ("range(20000000)", "n")):
            run, _ = render(f"{{{{ {value} | {name} }}}}", notes)
            _, elapsed, peak = measured(run)
            assert elapsed < SECONDS, (name, value, elapsed)
            assert peak < PEAK_BYTES, (name, value, peak)


@HYPOTHESIS
@given(base=st.integers(2, 10**6), exponent=st.integers(2, 1000), times=st.integers(1, 6))
def test_integer_arithmetic_is_bounded(base: int, exponent: int, times: int) -> None:
    source = "{{ " + " * ".join([f"({base} ** {exponent})"] * times) + " }}\n"
    run, _ = render(source)
    result, elapsed, peak = measured(run)
    assert elapsed < SECONDS and peak < PEAK_BYTES
    if isinstance(result, TemplateError):
        assert "bits" in str(result) or "digits" in str(result), result
        assert result.where == "text:1"


@HYPOTHESIS
@given(
    width=st.integers(0, 10**12),
    precision=st.integers(0, 10**12),
    how=st.sampled_from(
        [
            "'{:>{w}}'.format('x', w=W)",
            "'{0:{1}}'.format('x', W)",
            "'{:{w}.{p}f}'.format(1.5, w=W, p=P)",
            "'{a:^{w}}'.format_map({'a': 'b', 'w': W})",
            "'%*s' % (W, 'x')",
            "'%.*f' % (P, 1.5)",
            "'x'.rjust(W)",
            "'x' | center(W)",
        ]
    ),
)
def test_format_widths_are_bounded(width: int, precision: int, how: str) -> None:
    source = "{{ " + how.replace("W", str(width)).replace("P", str(precision)) + " }}\n"
    run, _ = render(source)
    result, elapsed, peak = measured(run)
    assert elapsed < SECONDS and peak < PEAK_BYTES, (source, elapsed, peak)
    if isinstance(result, TemplateError):
        assert result.where == "text:1"


def test_ordinary_templates_still_render() -> None:
    run, _ = render(
        "{{ notes | upper }} {{ '{:>5}'.format('x') }} {{ 2 ** 64 }} {{ 7 * 6 }}"
        " {{ notes.split() | join(',') }} {{ range(5) | batch(2) | list | length }}\n",
        "a b",
    )
    assert run() == "A B     x 18446744073709551616 42 a,b 3\n"


def test_too_much_output_names_the_line() -> None:
    """The output's size is checked outside the template's code; the line is the one the
    template was rendering when it went over."""
    error = refused("a\nb\n{% for i in range(100000) %}{{ 'x' * 999 }}{% endfor %}\n")
    assert error.where == "text:3"
    assert "renders more than 20,000,000 characters" in str(error)


def test_too_much_output_at_the_very_end_names_the_line() -> None:
    """When the render went over with its last pieces (the template had finished), the line is
    found by rendering it again one piece at a time, still within the bounds."""
    fifteen_million = "{% set s = 'x' * 1000000 %}{% set s = " + " ~ ".join(["s"] * 15) + " %}"
    error = refused("a\n" + fifteen_million + "\n{{ s }}{{ s }}\n")
    assert error.where == "text:3"
    assert "renders more than 20,000,000 characters" in str(error)

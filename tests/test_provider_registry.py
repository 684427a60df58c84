"""What a vendor needs is declared once, on its provider class, and everything else reads it.

A vendor registered like a plugin (no other module edited) is offered by the
CLI's help, the profiles' credential sets, the web page's form, the redaction
of echoed secrets and the child environment of ``bulkmdm serve``; and no
module outside ``providers/`` and ``sim/`` keys anything on a vendor's name.
"""

from __future__ import annotations

import ast
import base64
import inspect
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from bulkmdm import providers, sim
from bulkmdm.cli import main
from bulkmdm.config import credential_sets
from bulkmdm.errors import UsageError
from bulkmdm.providers.base import Credential, ExtraSetting, Provider
from bulkmdm.shown import Secrets
from bulkmdm.web.connection import Connection, connection_from_form, credential_fields, typed_values

PACKAGE = Path(__file__).resolve().parent.parent / "bulkmdm"
BUILT_IN = ("banyan", "duostation", "ivanti", "manageengine")


class Acme(Provider):
    """A vendor known only through its registration (no simulator)."""

    name = "acme"
    title = "Acme"
    actions = frozenset({"tag"})
    credential_fields = (
        Credential("BULKMDM_ACME_USER", "Acme user", secret=False),
        Credential("BULKMDM_ACME_KEY", "Acme key"),
    )
    credentials = (("BULKMDM_ACME_USER", "BULKMDM_ACME_KEY"),)
    extra_settings = (ExtraSetting("partition", "Site id", "7", digits=True, variable="BULKMDM_ACME_SITE"),)


@pytest.fixture
def acme(monkeypatch: pytest.MonkeyPatch) -> type[Acme]:
    monkeypatch.setitem(providers.PROVIDERS, "acme", f"{__name__}:Acme")
    return Acme


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_vendor_declares_its_credentials_limits_and_simulator(name: str) -> None:
    cls = providers.get(name)
    fields = {c.variable: c for c in cls.credential_fields}
    assert cls.credentials, "a vendor says which credentials are complete"
    for names in cls.credentials:
        assert set(names) <= set(fields), f"{name}: every credential set is made of declared fields"
        assert any(fields[v].secret for v in names), f"{name}: each set holds a secret"
    assert len(fields) == len(cls.credential_fields), "no field twice"
    assert cls.rate_window > 0
    assert cls.max_rate is None or (cls.default_rate or 0) <= cls.max_rate
    # its simulator is found through the class, and asks for what the class reads
    assert callable(sim.load(name))
    settings = {s.variable for s in cls.extra_settings}
    assert set(sim.client_env(name)) <= set(fields) | settings
    assert name in sim.names()


def test_the_registry_lists_every_variable_and_which_hold_secrets() -> None:
    secret = providers.secret_variables()
    assert "BULKMDM_PASSWORD" in secret and "BULKMDM_TOKEN" in secret and "BULKMDM_CLIENT_SECRET" in secret
    assert "BULKMDM_USERNAME" not in secret and "BULKMDM_OAUTH_URL" not in secret
    every = providers.credential_variables()
    assert set(secret) <= every and {"BULKMDM_USERNAME", "BULKMDM_PARTITION_ID", "BULKMDM_OAUTH_URL"} <= every


def test_a_registered_vendor_is_offered_everywhere_with_nothing_else_edited(
    acme: type[Acme], monkeypatch: pytest.MonkeyPatch
) -> None:
    # profiles and the keyring ask for its sets
    assert credential_sets("acme") == acme.credentials
    # the web page shows its fields, takes them, and never types a secret back
    assert credential_fields()["acme"] == acme.credential_fields
    form = {
        "provider": "acme",
        "url": "https://acme.example",
        "acme:BULKMDM_ACME_USER": "admin",
        "acme:BULKMDM_ACME_KEY": "acme-key-123",
        "acme:partition": "7",
    }
    connection = connection_from_form(form)
    assert connection.credentials == {"BULKMDM_ACME_USER": "admin", "BULKMDM_ACME_KEY": "acme-key-123"}
    assert connection.partition == "7"
    assert "acme:BULKMDM_ACME_KEY" not in typed_values(form) and typed_values(form)["acme:BULKMDM_ACME_USER"]
    with pytest.raises(UsageError, match="acme needs the site id"):
        connection_from_form({**form, "acme:partition": ""})
    with pytest.raises(UsageError, match="The acme credentials are empty"):
        connection_from_form({**form, "acme:BULKMDM_ACME_KEY": ""})
    # a child run of `bulkmdm serve` inherits none of its variables from the shell
    monkeypatch.setenv("BULKMDM_ACME_KEY", "from-the-shell")
    monkeypatch.setenv("BULKMDM_ACME_SITE", "9")
    child = Connection(provider="acme", url="https://acme.example").child_environment()
    assert "BULKMDM_ACME_KEY" not in child and "BULKMDM_ACME_SITE" not in child
    # its secret is redacted where a server echoes it, and so is the Basic form its
    # (inherited) auth sends
    env = {"BULKMDM_ACME_USER": "admin", "BULKMDM_ACME_KEY": "acme-key-123"}
    basic = base64.b64encode(b"admin:acme-key-123").decode()
    shown = Secrets.from_env(env).clean(f"bad key acme-key-123 in Basic {basic}")
    assert "acme-key-123" not in shown and basic not in shown and shown.count("[redacted]") == 2
    # the CLI's help names it and its credentials
    text = " ".join(CliRunner().invoke(main, ["run", "--help"], terminal_width=200).output.split())
    assert "acme" in text and "BULKMDM_ACME_USER, BULKMDM_ACME_KEY (acme)" in text
    assert "Acme site id (or BULKMDM_ACME_SITE)" in text
    # it has no simulator: `bulkmdm sim` does not offer one
    assert "acme" not in sim.names()
    result = CliRunner().invoke(main, ["sim", "acme", "--port", "0"])
    assert result.exit_code == 2 and "'acme' is not one of" in result.output


def _strings(path: Path, *, docstrings: bool = False) -> list[tuple[int, str]]:
    """The string constants of ``path`` (and its docstrings, with ``docstrings``), with their lines."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = (
        set()
        if docstrings
        else {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
    )
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skipped
    ]


def _where(path: Path, line: int, what: object) -> str:
    return f"{path.relative_to(PACKAGE.parent)}:{line}: {what!r}"


#: a built-in vendor's name (or title: "DuoSTATION", "ManageEngine") as a word of a sentence
VENDOR_WORD = re.compile(r"\b(" + "|".join(BUILT_IN) + r")\b", re.IGNORECASE)


def _vendor_keys(path: Path) -> list[str]:
    """Each place in ``path`` where a string names a vendor: a comparison, a key, an argument,
    or a word of a message or help text (docstrings aside)."""
    return [_where(path, line, value) for line, value in _strings(path) if VENDOR_WORD.search(value)]


def _vendor_tables(path: Path) -> list[str]:
    """Each dict literal in ``path`` keyed by a vendor's name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        _where(path, node.lineno, [key.value for key in node.keys if isinstance(key, ast.Constant)])
        for node in ast.walk(tree)
        if isinstance(node, ast.Dict)
        and any(isinstance(key, ast.Constant) and key.value in BUILT_IN for key in node.keys)
    ]


def _vendor_variables(path: Path) -> list[str]:
    """Each string in ``path``, docstrings included, that names an environment variable a
    provider declares (a credential's, or an extra setting's such as Ivanti's device space)."""
    variables = providers.credential_variables()
    return [
        _where(path, line, value)
        for line, value in _strings(path, docstrings=True)
        if any(variable in value for variable in variables)
    ]


def _modules_outside(*allowed: Path) -> list[Path]:
    return [path for path in sorted(PACKAGE.rglob("*.py")) if not any(path == a or a in path.parents for a in allowed)]


def test_no_module_outside_providers_and_sim_keys_on_a_vendor_name(acme: type[Acme]) -> None:
    vendors = (PACKAGE / "providers", PACKAGE / "sim")
    # the demo is a tour of the built-in vendors' example jobs: it names them as a script does
    assert [where for path in _modules_outside(*vendors, PACKAGE / "demo.py") for where in _vendor_keys(path)] == []
    # ... but even the demo keeps no table keyed by them (a port each, say) and writes out no
    # variable a provider declares (the registered fake one's included): it asks the registry
    outside = _modules_outside(*vendors)
    assert [where for path in outside for where in (*_vendor_tables(path), *_vendor_variables(path))] == []
    # (the scans find them where they are)
    registry = Path(inspect.getfile(providers))
    assert _vendor_keys(registry) and _vendor_tables(registry)
    assert _vendor_variables(PACKAGE / "providers" / "ivanti.py")
    assert _vendor_variables(Path(__file__)) and "BULKMDM_ACME_SITE" in providers.credential_variables()

"""A Terraform configuration (one folder of .tf files) as data, parsed with python-hcl2.

Strings keep Terraform's own spelling of expressions (``"${var.name}"``), so tests compare
references and literals, never evaluated values; :meth:`Config.references` lists what the
files refer to, for the checks ``terraform validate`` would make if providers could be
downloaded here.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any

import hcl2

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODULE = ROOT / "terraform" / "modules" / "lrobridge"
EXAMPLE = ROOT / "terraform" / "examples" / "cloud-run"

OPTIONS = hcl2.SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False
)
_REFERENCE_RE = re.compile(
    r"(?<![\w.])(var|local|module|data\.\w+|google_\w+)\.(\w+)"  # var.x, google_y.name, ...
)


@dataclasses.dataclass
class Config:
    folder: pathlib.Path
    resources: dict[str, dict[str, dict[str, Any]]]
    data: dict[str, dict[str, dict[str, Any]]]
    variables: dict[str, dict[str, Any]]
    locals: dict[str, Any]
    outputs: dict[str, dict[str, Any]]
    modules: dict[str, dict[str, Any]]
    text: str

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        return self.resources[kind][name]

    def references(self) -> set[tuple[str, str]]:
        """(kind, name) of every var./local./module./data./google_ reference in the files."""
        found = set()
        for line in self.text.splitlines():
            code = line.split("#", 1)[0]
            found.update(_REFERENCE_RE.findall(code))
        return found


def load(folder: pathlib.Path) -> Config:
    config = Config(folder, {}, {}, {}, {}, {}, {}, "")
    texts = []
    for path in sorted(folder.glob("*.tf")):
        texts.append(path.read_text())
        with path.open() as handle:
            parsed = hcl2.load(handle, serialization_options=OPTIONS)
        for block in parsed.get("resource", []):
            for kind, named in block.items():
                config.resources.setdefault(kind, {}).update(named)
        for block in parsed.get("data", []):
            for kind, named in block.items():
                config.data.setdefault(kind, {}).update(named)
        for block in parsed.get("variable", []):
            config.variables.update(block)
        for block in parsed.get("locals", []):
            config.locals.update(block)
        for block in parsed.get("output", []):
            config.outputs.update(block)
        for block in parsed.get("module", []):
            config.modules.update(block)
    config.text = "\n".join(texts)
    return config


def one(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """The single block of a nested block list (``push_config``, ``oidc_token``, ...)."""
    assert len(blocks) == 1, blocks
    return blocks[0]

"""Every Firestore call in the stores passes the bridge's retry policy per call (read off the
source: the reads inside transactions are many, and one without it would wait out the
library's 300 s default during an outage)."""

from __future__ import annotations

import ast
import pathlib

FIRESTORE = pathlib.Path(__file__).resolve().parents[2] / "lrobridge" / "storage" / "firestore"
# Methods of the Firestore client that make an RPC and take `retry=`.
RPC_METHODS = {"get", "get_all", "stream", "commit"}


def _passes_retry(call: ast.Call) -> bool:
    return any(k.arg == "retry" or k.arg is None for k in call.keywords)  # None: **options


def test_every_transactional_read_and_every_commit_passes_a_retry() -> None:
    missing = []
    for path in sorted(FIRESTORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            method = node.func.attr
            if ast.unparse(node.func.value) in ("self", "self.db"):
                continue  # FirestoreDatabase's own helpers, which pass it themselves
            in_transaction = any(k.arg == "transaction" for k in node.keywords) or (
                method == "get_all"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "tx"
            )
            rpc = method in RPC_METHODS and (in_transaction or method == "commit")
            if rpc and not _passes_retry(node):
                missing.append(f"{path.name}:{node.lineno} .{method}(...)")
    assert missing == []

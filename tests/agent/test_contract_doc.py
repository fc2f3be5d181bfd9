"""docs/contract.md documents every public name of emitter/contract.py."""

from pathlib import Path

from emitter import contract

DOC = Path(__file__).resolve().parents[2] / "docs" / "contract.md"


def test_every_contract_name_is_documented():
    text = DOC.read_text()
    names = [n for n in dir(contract) if not n.startswith("_") and n not in ("hashlib", "json")]
    missing = [n for n in names if f"`{n}" not in text and f" {n}" not in text]
    assert not missing, f"docs/contract.md does not mention: {missing}"

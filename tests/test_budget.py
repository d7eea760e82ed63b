import pytest

from prokt_deploy.budget import format_size, parse_size
from prokt_deploy.errors import UsageError


@pytest.mark.parametrize(
    "text,expected",
    [
        ("5MB", 5_000_000),
        ("200KB", 200_000),
        ("750kB", 750_000),
        ("1.5MiB", 1_572_864),
        ("64KiB", 65_536),
        ("20KB", 20_000),
        ("123", 123),
        ("10 MB", 10_000_000),
        ("0.5GB", 500_000_000),
        ("1gib", 1024**3),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "5XB", "0", "0KB", "-5MB", "MB", "5 M B", "nanMB", "1e999MB"])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError):
        parse_size(text)


def test_format_size():
    assert format_size(20_000) == "20.0 kB"
    assert format_size(999) == "999 B"
    assert format_size(5_000_000) == "5.0 MB"

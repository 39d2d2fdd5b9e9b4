"""What a page would fetch from outside itself: the self-contained check of results/index.html."""

from __future__ import annotations

import re

DATA_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]*")


def outside_references(html: str) -> list[str]:
    """Every address, import or link in `html` that is not an inline data: URI or an anchor on the page itself."""
    text = DATA_URI.sub("data:", html)
    found = re.findall(r"[a-z]+://|//[a-z]|<link\b|@import|url\(", text, flags=re.I)
    found += [a for a in re.findall(r'(?:src|href)="([^"]*)"', text) if not a.startswith(("data:", "#"))]
    return found

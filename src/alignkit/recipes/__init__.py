"""One recipe per stage; each reads top to bottom as numbered steps."""

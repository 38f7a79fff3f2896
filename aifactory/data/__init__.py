"""Datasets over time: feedback on past decisions (written by servers on nodes) and immutable, signed,
content-addressed dataset versions with erasure (made on the control host). docs/data.md."""

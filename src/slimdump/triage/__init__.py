"""Why the machine died: reason codes, and (later) panic classification."""

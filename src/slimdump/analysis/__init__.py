"""Analysis: what a dump says about the crash, as facts and as text."""

"""Log line parsers: one module per MTA plus the syslog envelope.

Pure functions from one line of text to one event; no I/O and no state, so
that the same line always gives the same event whichever source it came from.
"""

"""The core every part shares: settings, events, the lake, errors, the run summary. It imports no other layer."""

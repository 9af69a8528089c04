"""The PBX side: the S-Series API as a client speaks it (client.py), what the PBX
pushes (reports.py), and the rules both ends share (errors, names)."""

"""Stand-ins the tests share for what cannot run here: a Pexels API server, an SMPL model
file, a server that trickles bytes. Each speaks the real wire or file format."""

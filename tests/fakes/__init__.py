"""Stand-ins the tests share for what cannot run here: a Pexels API server, an SMPL model
file, a server that trickles bytes, each speaking the real wire or file format; and a teacher
that fails on cue (`teachers`), for failure paths no real teacher hits on demand."""

"""The coordinator's admin daemon (`synthpool coordinator serve-admin`): the gRPC admin API, its
state store, the certificate authority, the training runner that submits Flower runs, and the
signing of releases. It reads what the ServerApp writes (checkpoints, releases), never the
other way round."""

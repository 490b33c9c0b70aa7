"""`vertedge serve`: a DICOM node beside the scanner that labels every CT series it receives.

- `config`: the node's settings (`NodeOptions`), read from a TOML file;
- `select`: which received series are labelled;
- `store`: received instances and the queue on the disk;
- `server`: the Storage SCP, the labeller and the sender (`Node`).

pynetdicom is imported only when a node starts: `import vertedge` stays lean.
"""

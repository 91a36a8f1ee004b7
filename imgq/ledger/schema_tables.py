"""Migrations 1-8 of the ledger's schema: the tables (files, jobs, events, archive
targets, copies, faces, hosts, meta) and their first changes. Listed in order in
``imgq.ledger.migrations.MIGRATIONS``; append-only like every migration.
"""

from __future__ import annotations


def _m1_core(db: "sqlite_utils.Database") -> None:
    db["files"].create(
        {
            "id": str,  # OWNER_EPOCH_BASENAME, unique, human-readable
            "inbox": str,  # absolute inbox root the file was found under
            "path": str,  # path relative to the inbox root
            "owner": str,
            "size": int,
            "mtime_ns": int,
            "sha256": str,
            "taken_at": str,  # ISO 8601, EXIF DateTimeOriginal else mtime (UTC)
            "taken_source": str,  # 'exif' or 'mtime'
            "format": str,
            "width": int,
            "height": int,
            "meta": str,  # JSON: camera make/model, orientation, ...
            "state": str,
            "error": str,
            "duplicate_of": str,
            "created_at": float,
            "updated_at": float,
        },
        pk="id",
        foreign_keys=[("duplicate_of", "files", "id")],
        not_null={"inbox", "path", "owner", "state", "created_at", "updated_at"},
    )
    db["files"].create_index(["inbox", "path"])
    db["files"].create_index(["sha256"])
    db["files"].create_index(["state"])

    db["jobs"].create(
        {
            "id": int,
            "file_id": str,
            "recipe": str,
            "spec": str,  # JSON {artifact: chain}; part of the job's identity
            "spec_hash": str,
            "state": str,
            "attempts": int,
            "max_attempts": int,
            "not_before": float,
            "lease_owner": str,
            "lease_until": float,
            "lease_token": str,
            "host": str,
            "error": str,
            "error_kind": str,
            "result": str,
            "created_at": float,
            "updated_at": float,
        },
        pk="id",
        foreign_keys=[("file_id", "files", "id")],
        not_null={"file_id", "recipe", "spec", "spec_hash", "state", "attempts", "max_attempts", "not_before"},
        defaults={"attempts": 0, "not_before": 0},
    )
    db["jobs"].create_index(["file_id", "recipe", "spec_hash"], unique=True)
    db["jobs"].create_index(["state", "not_before"])

    db["artifacts"].create(
        {
            "id": int,
            "job_id": int,
            "file_id": str,
            "name": str,
            "path": str,  # relative to the store
            "sha256": str,
            "bytes": int,
            "width": int,
            "height": int,
            "created_at": float,
        },
        pk="id",
        foreign_keys=[("job_id", "jobs", "id"), ("file_id", "files", "id")],
        not_null={"job_id", "file_id", "name", "path", "sha256", "bytes"},
    )
    db["artifacts"].create_index(["job_id", "name"], unique=True)
    db["artifacts"].create_index(["file_id"])

    db["copies"].create(
        {
            "id": int,
            "file_id": str,
            "artifact_id": int,  # NULL for the original
            "destination": str,
            "path": str,
            "sha256": str,
            "bytes": int,
            "verified_at": float,
            "created_at": float,
        },
        pk="id",
        foreign_keys=[("file_id", "files", "id"), ("artifact_id", "artifacts", "id")],
        not_null={"file_id", "destination", "path", "sha256", "bytes", "created_at"},
    )
    db["copies"].create_index(["file_id", "destination"])

    db["events"].create(
        {
            "id": int,
            "at": float,
            "entity": str,  # 'file', 'job', 'target' or 'copy' (the last two: archive)
            "file_id": str,
            "job_id": int,
            "from_state": str,
            "to_state": str,
            "host": str,
            "actor": str,
            "detail": str,
        },
        pk="id",
        not_null={"at", "entity", "to_state"},
    )
    db["events"].create_index(["file_id"])
    db["events"].create_index(["job_id"])
    db["events"].create_index(["at"])

    db["runs"].create(
        {
            "id": int,
            "command": str,
            "args": str,  # JSON
            "host": str,
            "pid": int,
            "started_at": float,
            "ended_at": float,
            "exit_code": int,
            "counts": str,  # JSON
        },
        pk="id",
        not_null={"command", "started_at"},
    )


def _m2_archive(db: "sqlite_utils.Database") -> None:
    # One row per file per archive destination: how copying it there is going. A
    # destination that is down or full fails only its own rows, which wait out a backoff.
    db["archive_targets"].create(
        {
            "id": int,
            "file_id": str,
            "destination": str,  # canonical: absolute local path or ssh://[user@]host[:port]/path
            "attempts": int,  # failed attempts in a row; 0 after a success
            "not_before": float,  # backoff: not tried again before this time
            "error": str,  # the last failure, for status
            "error_kind": str,
            "created_at": float,
            "updated_at": float,
        },
        pk="id",
        foreign_keys=[("file_id", "files", "id")],
        not_null={"file_id", "destination", "attempts", "not_before", "created_at", "updated_at"},
        defaults={"attempts": 0, "not_before": 0},
    )
    db["archive_targets"].create_index(["file_id", "destination"], unique=True)
    db["archive_targets"].create_index(["destination", "not_before"])

    # The names a file owns at a destination (its original and each artifact), reserved
    # before anything is written, so two photos can never be given the same name.
    db["archive_paths"].create(
        {
            "id": int,
            "file_id": str,
            "destination": str,
            "role": str,  # 'original' or the artifact's name (thumb, web, ...)
            "path": str,  # relative to the destination root
            "created_at": float,
        },
        pk="id",
        foreign_keys=[("file_id", "files", "id")],
        not_null={"file_id", "destination", "role", "path", "created_at"},
    )
    db["archive_paths"].create_index(["destination", "path"], unique=True)
    db["archive_paths"].create_index(["file_id", "destination", "role"], unique=True)

    # A copy row is a verified copy; one file name at a destination holds one copy.
    db["copies"].create_index(["destination", "path"], unique=True)

    # The latest verdict of `imgq collect` on each original still in the inbox.
    db["collect_checks"].create(
        {
            "file_id": str,
            "checked_at": float,
            "verdict": str,  # 'wait' (not archived yet) or 'keep' (a problem: see reason)
            "reason": str,
            "verified_copies": int,
        },
        pk="file_id",
        foreign_keys=[("file_id", "files", "id")],
        not_null={"checked_at", "verdict", "reason"},
    )


def _m3_faces(db: "sqlite_utils.Database") -> None:
    # One row per artifact of a done job whose chain ran a `faces` step: how many faces
    # it found, in a frame of width x height pixels (the image the boxes refer to). A
    # scan with 0 faces is a fact too: "looked, nobody there".
    db["face_scans"].create(
        {
            "id": int,
            "file_id": str,
            "job_id": int,
            "artifact": str,
            "faces": int,
            "width": int,
            "height": int,
            "at": float,
        },
        pk="id",
        foreign_keys=[("file_id", "files", "id"), ("job_id", "jobs", "id")],
        not_null={"file_id", "job_id", "artifact", "faces", "at"},
    )
    db["face_scans"].create_index(["job_id", "artifact"], unique=True)
    db["face_scans"].create_index(["file_id"])
    # One row per face found: its box in the scan's frame.
    db["faces"].create(
        {"id": int, "scan_id": int, "file_id": str, "job_id": int, "x": int, "y": int, "w": int, "h": int},
        pk="id",
        foreign_keys=[("scan_id", "face_scans", "id"), ("file_id", "files", "id"), ("job_id", "jobs", "id")],
        not_null={"scan_id", "file_id", "job_id", "x", "y", "w", "h"},
    )
    db["faces"].create_index(["file_id"])
    db["faces"].create_index(["scan_id"])
    # Labels on a file that are not states (its lifecycle is fixed): e.g. no_faces, set by
    # a recipe with on_no_faces = "tag" or "skip". `source` names what set it (a recipe).
    db["tags"].create(
        {"id": int, "file_id": str, "tag": str, "source": str, "job_id": int, "detail": str, "at": float},
        pk="id",
        foreign_keys=[("file_id", "files", "id"), ("job_id", "jobs", "id")],
        not_null={"file_id", "tag", "source", "at"},
    )
    db["tags"].create_index(["file_id", "tag", "source"], unique=True)
    db["tags"].create_index(["tag"])


def _m4_job_stages(db: "sqlite_utils.Database") -> None:
    # A huge image can be split: its job becomes stripe jobs ('stripe:I/N') and, once they
    # are all done, a 'join' job; '' is an ordinary job. The stage is part of the job's
    # identity, so the unique index moves to include it ('' rather than NULL, because
    # NULLs never collide in a unique index).
    db.execute("ALTER TABLE jobs ADD COLUMN stage TEXT NOT NULL DEFAULT ''")
    db.execute("DROP INDEX idx_jobs_file_id_recipe_spec_hash")
    db["jobs"].create_index(["file_id", "recipe", "spec_hash", "stage"], unique=True)


def _m5_hosts(db: "sqlite_utils.Database") -> None:
    # One row per host a fleet coordinator (`imgq work --hosts`) has used: its state
    # (connecting, up, benched, draining, removed, stopped), why it is benched and until
    # when, and counters. Written by imgq.ledger.hosts only; `imgq status` reads it.
    db["hosts"].create(
        {
            "name": str,  # [user@]host[:port] as written in --hosts or the hosts file
            "slots": int,
            "state": str,
            "reason": str,  # why benched (or the last trouble), for status
            "benched_until": float,  # not tried again before this time
            "failures": int,  # connect, preflight or loss failures in a row
            "done": int,  # jobs completed on the host, all runs
            "failed": int,  # jobs that failed on it
            "lost": int,  # times it was lost mid-run (died, hung, cut off)
            "version": str,  # imgq version its agent reported
            "cores": int,
            "free_disk": int,  # bytes free in the agent's folder at its last hello/beat
            "coordinator": str,  # hostname:pid of the coordinator that wrote the row
            "seen_at": float,  # last heartbeat from its agent
            "updated_at": float,
        },
        pk="name",
        not_null={"state", "updated_at"},
        defaults={"failures": 0, "done": 0, "failed": 0, "lost": 0},
    )


def _m6_destination_identity(db: "sqlite_utils.Database") -> None:
    # A destination is identified by what it is, not how it was spelled: a local folder by
    # the (device, inode) of its root, a remote one by the random id in the marker file
    # imgq writes there at first use (imgq.destinations). Two spellings of one folder
    # (a symlink, ssh://nas/x and ssh://u@nas:22/x) then count as one copy, not two.
    db["destinations"].create(
        {
            "url": str,  # the canonical spelling used in --to / imgq.toml
            "identity": str,  # 'local:DEV:INO' or 'marker:HEX'
            "real": str,  # the real path (local) or the url, for people
            "seen_at": float,
        },
        pk="url",
        not_null={"identity", "seen_at"},
    )
    db["destinations"].create_index(["identity"])
    db.execute("ALTER TABLE copies ADD COLUMN destination_id TEXT")
    db.execute("ALTER TABLE archive_paths ADD COLUMN destination_id TEXT")
    # Reserved names compared case-folded: on FAT/exFAT, SMB and macOS two names that
    # differ only in case are one file.
    db.execute("ALTER TABLE archive_paths ADD COLUMN folded TEXT")
    rows = db.execute("SELECT id, path FROM archive_paths").fetchall()
    db.conn.executemany("UPDATE archive_paths SET folded = ? WHERE id = ?", [(path.casefold(), i) for i, path in rows])
    db["archive_paths"].create_index(["destination", "folded"])
    db["archive_paths"].create_index(["destination_id", "folded"])
    db["copies"].create_index(["destination_id"])


def _m7_meta(db: "sqlite_utils.Database") -> None:
    # Facts about the database itself. 'database_id' is a random id made once, here: the
    # artifact store carries it in a marker, so a second database pointed at the same
    # store is refused instead of overwriting the first one's artifacts (store.own).
    import secrets

    db["meta"].create({"key": str, "value": str}, pk="key", not_null={"value"})
    db["meta"].insert({"key": "database_id", "value": secrets.token_hex(16)})


def _m8_archive_target_states(db: "sqlite_utils.Database") -> None:
    # An archive target is a state machine like a job (imgq.ledger.archive_targets):
    # pending, waiting (failed, in backoff) or done, each change checked and evented.
    # Existing rows: waiting if their last attempt failed, else pending (the next
    # archive that copies what they lack makes them done).
    db.execute("ALTER TABLE archive_targets ADD COLUMN state TEXT NOT NULL DEFAULT 'pending'")
    db.execute("UPDATE archive_targets SET state = 'waiting' WHERE error IS NOT NULL")


"""One huge image across many workers: horizontal stripes with a halo, then a join.

- ``plan`` (pure, no I/O): which chains split and where (``divide``, ``halo``,
  ``worth_splitting``), the stripes' rows (``plan``), job stages and part paths;
- ``run`` (the I/O): a stripe job renders its rows and saves them as a lossless part,
  the join job loads the parts, stacks them and finishes each chain.

The plan's names are re-exported here (``split.plan(...)`` is the function; its module is
``imgq.split.plan``, imported by name: ``from imgq.split.plan import ...``). ``run`` is not
imported here: the ledger imports this package for the plan and must not pull in imaging.

plan may import ops only; run may import imaging, ops, store, config and errors.
"""

from imgq.split.plan import (
    JOIN,
    Stripe,
    divide,
    halo,
    join_stage,
    parse_stage,
    part_path,
    plan,
    stage,
    worth_splitting,
)

__all__ = ["JOIN", "Stripe", "divide", "halo", "join_stage", "parse_stage", "part_path", "plan", "stage", "worth_splitting"]

"""The cost-of-persistence benchmark's run: seeding, alternating POST and GET runs, RSS."""

from __future__ import annotations

import shutil

from bench.env import BenchEnv
from bench.persistence_cost.driver import Run, seed, timed
from bench.persistence_cost.rows import bench_result
from bench.persistence_cost.rss import measure_rss
from bench.persistence_cost.servers import servers
from bench.persistence_cost.sizes import FULL, QUICK
from bench.persistence_cost.uploads import GetJobs, ImageUploads
from bench.report import BenchResult


def run(env: BenchEnv, quick: bool) -> BenchResult:
    sizes = QUICK if quick else FULL
    db_url = env.create_database("cost")
    scratch = env.scratch_dir("cost")
    posts: dict[str, list[Run]] = {"ours": [], "bare": []}
    gets: dict[str, list[Run]] = {"ours": [], "bare": []}
    try:
        with servers(env, db_url, scratch) as (ours, bare):
            sides = {"ours": ours, "bare": bare}
            ids = {name: seed(server, sizes.seeds) for name, server in sides.items()}
            for rep in range(sizes.repetitions):
                order = ["ours", "bare"] if rep % 2 == 0 else ["bare", "ours"]
                for name in order:
                    server = sides[name]
                    uploads = ImageUploads(server.port, first=rep * 10**6)
                    warm = f"/analyses/{ids[name][0]}"
                    posts[name].append(timed(server, uploads, sizes.posts, sizes, warm))
                for name in order:
                    server = sides[name]
                    reads = GetJobs(server.port, ids[name])
                    warm = f"/analyses/{ids[name][0]}"
                    gets[name].append(timed(server, reads, sizes.gets, sizes, warm))
            rss = measure_rss(ours, sizes.big_uploads)
            bare_rss = measure_rss(bare, sizes.big_uploads)
            ours_log = ours.log_tail()
    finally:
        env.drop_database(db_url)
        shutil.rmtree(scratch, ignore_errors=True)  # up to 2 GiB of stored big uploads
    return bench_result(sizes, posts, gets, rss, bare_rss, ours_log)

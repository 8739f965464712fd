"""The private PostgreSQL cluster the writer's tests use (scripts/pg.sh
through harness.Postgres): it answers on its unix socket, keeps what was
written across a stop and a start, and is stopped when the case ends."""

from harness import Postgres, case, check, check_eq, pid_alive


@case(timeout=10)
def pg_cluster(env):
    pg = Postgres(env).start()
    check_eq(pg.scalar("select 1"), "1", "select 1")
    check_eq(pg.scalar("select current_database()"), "tokmon", "database")
    pid = pg.pid()
    check(pid and pid_alive(pid), "no postmaster running (pid %r)", pid)
    pg.psql("create table t (id int primary key, name text); insert into t values (1, 'kept')")
    check_eq(pg.psql("select id, name from t"), [["1", "kept"]], "row before the restart")
    # start while running: the same server and conninfo
    conninfo = pg.conninfo
    check_eq(pg.start().conninfo, conninfo, "conninfo of a second start")
    check_eq(pg.pid(), pid, "postmaster after a second start")

    pg.stop()
    check(not pid_alive(pid), "postmaster %d still there after stop()", pid)
    check(not pg.running(), "pg.sh status says running after stop")
    pg.stop()  # not running: fine

    pg.start()
    check_eq(pg.conninfo, conninfo, "conninfo after the restart")
    check(pg.pid() != pid, "the same postmaster pid %r after a restart", pid)
    check_eq(pg.psql("select id, name from t"), [["1", "kept"]], "row after the restart")
    check_eq(pg.scalar("select name from t where id = 2"), None, "no row")

/*
 * The runctl protocol (docs/runctl-protocol.md), as a Promela model for spin.
 *
 * Processes: NL launchers (confine-hook), the daemon (refreshd's wait-for-apps and the
 * critical section it guards, ROUNDS times), the kernel's release agent (cgroup v1), and
 * the environment: a daemon crash or a reboot, and a user's abort. App processes exit at
 * any point (interleaving). With SYSTEMD, two systemd managers per launcher instead of the
 * agent. Run it with scripts/model-check.sh.
 *
 * Backend, chosen with -D at `spin -a` time:
 *   (default)   v1: freezer cgroup, release agent unlinks snap.NAME.running, inotify on runctl
 *   TRACK_V2    v2: inotify on cgroup.events, `populated 0`
 *   TRACK_POLL  v1-poll: the daemon re-reads cgroup.procs on a timer
 *   SYSTEMD     the systemd world (no freezer): a launch joins a transient scope that a
 *               manager makes for it, asynchronously -- the user's manager (or a fake on the
 *               user's socket), else the system manager -- checks with the kernel that it is
 *               in it, and records the unit in RUNCTL/units; the daemon reads the cgroups of
 *               the recorded units and is woken by their cgroup.events
 * BLOCK         refresh-pending-behavior: block (marker written before apps have drained)
 * STOP          a user stops (SIGSTOP) launcher 0 for good while it holds the snap's lock
 * DATA          users' data: each launch makes its user's data directory of the revision it
 *               runs (as that user, after the join, under the user's own lock); launchers 0
 *               and 1 are one user, launcher 2 another
 *
 * Mutations (each must make the check fail; scripts/model-check.sh proves it does):
 *   BUGGY_NO_LOCK            launcher checks the marker and joins without the lock
 *   BUGGY_JOIN_AFTER_UNLOCK  launcher unlocks before it joins the cgroup
 *   BUGGY_EARLY_REV          launcher reads `current` before it has joined
 *   BUGGY_NO_RECHECK         launcher waits for the marker's removal without re-checking
 *                            after arming its inotify watch (lost wake-up)
 *   BUGGY_NO_ARM             v1 daemon reads cgroup.procs without first creating
 *                            snap.NAME.running (lost wake-up: the agent's unlink is the event)
 *   BUGGY_ARM_AFTER_READ     v1 daemon creates snap.NAME.running only after reading
 *                            cgroup.procs (lost wake-up when the last app exits in between)
 *   BUGGY_UNLOCKED_CHECK     daemon reads cgroup.procs before it takes the lock
 *   BUGGY_NO_REENTER         after a restart, the critical tasks go on without re-entering
 *                            the critical section (a reboot emptied /run: apps started)
 *   BUGGY_SHARED_DAEMON      the daemon takes the snap's lock shared, as launchers do
 *   BUGGY_EXCLUSIVE_LAUNCH   launchers take the snap's lock exclusively (one user's halted
 *                            launcher then holds back every other user's launches)
 *   BUGGY_DATA_BEFORE_JOIN   (DATA) a launch makes its user's data before it has joined, for
 *                            the revision `current` named then
 *   BUGGY_NO_DATA_LOCK       (DATA) a launch makes its user's data without the user's lock
 *   BUGGY_UNLOCK_BEFORE_MOVE (SYSTEMD) launcher unlocks once it has asked for its scope,
 *                            before it has seen itself moved there
 *   BUGGY_RECORD_AFTER_UNLOCK (SYSTEMD) launcher records its unit after it has unlocked
 *   BUGGY_TRUST_JOB_RESULT   (SYSTEMD) launcher takes a manager's "done" for the move, without
 *                            checking /proc/self/cgroup (a fake manager never moves it)
 *   BUGGY_FALLBACK_ON_DEADLINE (SYSTEMD) launcher turns to the system manager when the user's
 *                            has not answered in time (its job may still run later)
 *
 * Properties:
 *   ltl safe  -- no app process is in the cgroup while the daemon is in the critical section
 *                (SYSTEMD: none in a recorded unit, and no app outside every recorded unit)
 *   ltl live  -- the daemon finishes all its rounds and every launch ends; holds without
 *                fairness for v1 and v2, needs weak fairness (-f) for v1-poll
 *   ltl others-- (STOP) every launch but the halted one ends: no user holds up another's
 *   monitor   -- the same invariant as `safe`, as a process, for runs without a claim
 *   asserts   -- `current` never changes under a running app; the daemon enters the critical
 *                section only with an empty cgroup; a launcher never joins inside it; (DATA)
 *                an app runs with its user's data of its own revision, and a user's data is
 *                never made again while an app of that user runs
 *   end states-- no process is stuck (launchers waiting on a marker nobody will remove, the
 *                daemon waiting for an event that will never come)
 *
 * CLAIM_ONLY turns the in-line assertions and the monitor off, to show a claim catching a
 * bug by itself. NO_CRASH, NO_ABORT, NO_DIE (and with SYSTEMD NO_FAKE: no fake manager) switch
 * parts of the environment off (smaller runs).
 */

#ifndef NL
#ifdef SYSTEMD
#define NL 2            /* launchers (3: 58 million states, 5.2 GB with -DCOLLAPSE) */
#else
#define NL 3            /* launchers */
#endif
#endif
#ifndef ROUNDS
#define ROUNDS 2        /* refreshes (changes) the daemon makes */
#endif
#ifndef LAUNCHES
#define LAUNCHES 1      /* apps each launcher starts, one after the other */
#endif

#ifdef SYSTEMD
#if LAUNCHES != 1
#error "SYSTEMD models one launch per launcher (its managers serve one request each)"
#endif
#if defined(TRACK_V2) || defined(TRACK_POLL)
#error "SYSTEMD is a tracking backend of its own: no TRACK_V2, TRACK_POLL"
#endif
#if defined(BUGGY_NO_LOCK) || defined(BUGGY_JOIN_AFTER_UNLOCK)
#error "SYSTEMD has its own join: BUGGY_UNLOCK_BEFORE_MOVE, not BUGGY_NO_LOCK/JOIN_AFTER_UNLOCK"
#endif
#endif

#ifdef BLOCK
#define BLOCKING 1
#else
#define BLOCKING 0
#endif

#define FREE   255      /* a user's data lock: nobody holds it */

/* the daemon's persistent progress (the task statuses in the database) */
#define P_WAIT 0        /* wait-for-apps not done */
#define P_CS   1        /* the critical tasks: copy data, link (current := new revision) */
#define P_LIFT 2        /* allow-launches: unlink the marker */

/* --- shared state: the files and the kernel --- */
byte sh;                /* flock on snap.NAME.lock: launchers holding it shared */
bool ex;                /* ... and the daemon holding it exclusively */
bool inhibited;         /* snap.NAME.inhibited exists */
bool running;           /* snap.NAME.running exists */
byte cg;                /* cgroup membership: bit i = launcher i's app process (SYSTEMD: it is
                           in the unit recorded for it, so the daemon sees it) */
bool release_queued;    /* v1: the kernel has queued a call of the release agent */
byte cur;               /* ROOT/snap/NAME/current: revision number */

/* --- inotify --- */
bool dev;               /* the daemon's event for NAME fired since its handler started */
bool larmed[NL];        /* launcher i has an inotify watch on runctl */
bool lev[NL];           /* ... and it saw snap.NAME.inhibited go */

/* --- the daemon --- */
bool in_cs;             /* in the critical section (volatile: lost on a crash) */
byte phase = P_WAIT;    /* persistent */
byte round;             /* persistent: changes finished */
byte launched;          /* launchers that have finished all their launches */
bool started;           /* the daemon has started before (so this is a restart) */

/* --- the environment --- */
byte crash_req;         /* 1: the daemon crashes; 2: the machine reboots */
bool abort_req;         /* a user asks to abort the change */
bool halted;           /* STOP: launcher 0 was halted while holding the lock */

/* --- users' data (DATA) --- */
#define NU 2
#define UOF(i) ((i) / 2) /* launchers 0 and 1: user 0; launcher 2: user 1 */
byte udata[NU];         /* the revision user u's data directory was made for (its mark) */
byte ulock[NU] = FREE;  /* flock on the user's own lock: launcher holding it */
byte apprev[NL];        /* the revision launcher i's app runs, 0 when none */

/* --- the systemd world (SYSTEMD) --- */
#define M_USER   1      /* the user's manager (user@U.service), on the user's own socket */
#define M_SYSTEM 2      /* the system manager (PID 1) */
#define SESSION  0      /* where[i]: the login session's scope, where the launch starts */
#define GONE     3      /* where[i]: the process has exited */
#define DONE     1      /* ans[i]: JobRemoved, result "done" */
#define FAILED   2      /* ans[i]: an error, or a job that failed */
#define REFUSED  4      /* a launcher's unit: none, the app is not started */
#ifdef SYSTEMD
byte where[NL];         /* kernel: launcher i's process is in the scope of M_USER / M_SYSTEM */
byte reg[NL];           /* RUNCTL/units: the unit recorded for launcher i's launch (0: none) */
byte asked[NL];         /* requests sent for launcher i's pid (bit M_USER, M_SYSTEM): a manager
                           still acts on one after the launcher stopped waiting */
byte asking[NL];        /* the manager launcher i waits for now (0: none) */
byte ans[NL];           /* ... and its answer (0: none yet) */
byte app;               /* bit i: launcher i has gone on to its app (step 7), which runs */
byte untracked;         /* app & ~cg: apps the daemon cannot see */
#endif

/* In-line checks; CLAIM_ONLY leaves only the LTL claims (to show they catch bugs alone). */
#ifdef CLAIM_ONLY
#define CHECK(x) skip
#else
#define CHECK(x) assert(x)
#endif

/* the protocol's safety invariant */
#ifdef SYSTEMD
#define SAFE (!(in_cs && (cg != 0 || untracked != 0)))
#else
#define SAFE (!(in_cs && cg != 0))
#endif

ltl safe { [] SAFE }
ltl live { <> (round == ROUNDS && launched == NL) }
ltl others { <> (launched >= NL - 1) }

/* The snap's lock: launchers share it, the daemon takes it alone (rule R1, R3). */
#ifdef BUGGY_EXCLUSIVE_LAUNCH
inline acquire_sh() { atomic { !ex && sh == 0 -> sh++ } }
#else
inline acquire_sh() { atomic { !ex -> sh++ } }
#endif
inline release_sh() { sh-- }
#ifdef BUGGY_SHARED_DAEMON
#define EX_FREE (!ex)
#define EX_TAKE skip
#define EX_DROP skip
#else
#define EX_FREE (!ex && sh == 0)
#define EX_TAKE ex = true
#define EX_DROP ex = false
#endif

/* Unlink snap.NAME.inhibited: every launcher whose watch is armed sees IN_DELETE. */
inline unlink_inhibited() {
  atomic {
    inhibited = false;
    for (j : 0 .. NL - 1) {
      if
      :: larmed[j] -> lev[j] = true
      :: else
      fi
    }
  }
}

/* The cgroup just became empty: what the kernel does about it. */
inline cgroup_emptied() {
#if defined(TRACK_V2)
  dev = true                    /* cgroup.events: populated 0 (IN_MODIFY) */
#elif defined(TRACK_POLL)
  skip                          /* nobody is told */
#else
  release_queued = true         /* call the release agent, some time later */
#endif
}

/* A launch is over: launch again, or be done. */
inline finish(i) {
  n++;
  if
  :: n < LAUNCHES -> goto again
  :: else -> launched++; goto done
  fi
}

/* A launcher joins the cgroup (writes its pid to cgroup.procs). */
inline join(i) {
  CHECK(!in_cs);
#ifdef TRACK_V2
  if
  :: cg == 0 -> dev = true          /* populated 1: IN_MODIFY too */
  :: else
  fi;
#endif
  cg = cg | (1 << i)
}

/* A process leaves the cgroup (exit, or death of the launcher). */
#ifndef SYSTEMD
inline leave(i) {
  cg = cg & ~(1 << i);
  if
  :: cg == 0 -> cgroup_emptied()
  :: else
  fi
}
#else
/* Launcher i's process exits: its scope (one process) empties. The daemon watches the
   cgroup.events of every recorded unit: `populated 0` wakes it. */
inline leave(i) {
  where[i] = GONE;
  app = app & ~(1 << i);
  if
  :: cg & (1 << i) -> cg = cg & ~(1 << i); dev = true
  :: else
  fi;
  untracked = app & ~cg
}

/* After where[i] or reg[i] changed: is launcher i's process where the daemon looks? */
inline track(i) {
  cg = (reg[i] != 0 && where[i] == reg[i] -> cg | (1 << i) : cg & ~(1 << i));
  untracked = app & ~cg
}

/*
 * A manager's side of launcher i's request (m: M_USER or M_SYSTEM). Its job runs some time
 * later, whether or not the launcher still waits: the scope takes the process wherever it is
 * -- the user's manager too, by PID 1's AttachProcessesToUnit, which moves any process whose
 * real uid is the user's, out of a system scope as well. Its answer reaches the launcher only
 * while the launcher still waits on it; a manager that never answers is the launcher's
 * deadline. A manager that refuses (or a socket nobody listens on) never moves it.
 */
#define ANSWER(i, m, a) ans[i] = (asking[i] == m -> a : ans[i])  /* else: to a closed socket */
#define TAKE(i, m) (asked[i] & m) != 0 -> asked[i] = asked[i] & ~m

proctype manager(byte i; byte m) {
end:
  if
  :: atomic { TAKE(i, m); where[i] = (where[i] != GONE -> m : GONE); track(i) };  /* the job */
     ANSWER(i, m, (where[i] == m -> DONE : FAILED))
  :: atomic { TAKE(i, m); ANSWER(i, m, FAILED) }    /* refuses (or is not there) */
#ifndef NO_FAKE
  :: atomic { m == M_USER && TAKE(i, m); ANSWER(i, m, DONE) };  /* a fake on the user's socket:
                                                       "done" first; then no move, or one */
     if
     :: skip
     :: atomic { where[i] = (where[i] != GONE -> m : GONE); track(i) }
     fi
#endif
  fi
}

/*
 * Steps 2-6 of the systemd world, under the lock. StartTransientUnit(UNIT, PIDs=[own pid]) to
 * manager m is a send; the launcher takes the answer (JobRemoved, or an error) whenever it
 * comes, or goes on without one at any time (its deadline passed). Only an answer that the
 * user's manager will not take the process (an error, a job that ended otherwise than
 * "done") sends it to the system manager: after a deadline, that manager's job may still
 * run, and would take the app out of the system scope recorded for it.
 */
inline request(i, m) { asking[i] = m; asked[i] = asked[i] | m; ans[i] = 0 }
inline hang_up(i) { asking[i] = 0; ans[i] = 0 }

/* Step 3: /proc/self/cgroup names the unit -- or, broken, the manager's word for it. */
#ifdef BUGGY_TRUST_JOB_RESULT
#define IN_UNIT(i, m) true
#else
#define IN_UNIT(i, m) (where[i] == m)
#endif

#ifdef BUGGY_UNLOCK_BEFORE_MOVE
#define UNLOCK_AT_END skip                          /* (done already) */
#else
#define UNLOCK_AT_END release_sh()
#endif

inline record(i) {
  CHECK(!in_cs);                                    /* never joins inside the section */
  reg[i] = unit; track(i);                          /* RUNCTL/units/UNIT (temp + rename) */
  dev = true                                        /* IN_MOVED_TO on RUNCTL/units */
}

/*
 * The launch is in `unit` (REFUSED: in none): record it, create running, unlock -- or exit.
 * Verified, recorded, unlocked is one step, as steps 4-6 are in the hybrid world: under the
 * lock only app exits and managers' jobs act meanwhile, and once verified no job is pending
 * that could move the process (the one it asked has run; the other refused or was not asked).
 */
inline joined(i) {
  hang_up(i);
  if
  :: unit == REFUSED ->                             /* the app is not started */
     where[i] = GONE; track(i); UNLOCK_AT_END; unit = 0; finish(i)
#ifdef BUGGY_RECORD_AFTER_UNLOCK
  :: else -> running = true; release_sh()           /* 5, 6; 4 comes after */
#else
  :: else ->
     record(i);                                     /* 4 */
     if
     :: running = true; UNLOCK_AT_END               /* 5, 6 */
#ifndef NO_DIE
     :: leave(i); UNLOCK_AT_END; unit = 0; finish(i) /* dies: exit; the kernel drops the flock */
#endif
     fi
#endif
  fi
}

inline sd_join(i) {
  atomic { request(i, M_USER) };                    /* 2: the user's manager first */
#ifdef BUGGY_UNLOCK_BEFORE_MOVE
  release_sh();
#endif
  atomic {
    if
    :: ans[i] == DONE -> unit = (IN_UNIT(i, M_USER) -> M_USER : REFUSED)  /* 3 (else a lie) */
    :: ans[i] == FAILED -> request(i, M_SYSTEM)     /* refused: the system manager */
#ifdef BUGGY_FALLBACK_ON_DEADLINE
    :: ans[i] == 0 -> request(i, M_SYSTEM)          /* no answer in time: the system manager */
#else
    :: ans[i] == 0 -> unit = REFUSED                /* no answer in time: not started */
#endif
    fi
  };
  atomic {
    if
    :: unit == 0 -> unit = (ans[i] == DONE && IN_UNIT(i, M_SYSTEM) -> M_SYSTEM : REFUSED)
    :: else
    fi;
    joined(i)
  };
#ifdef BUGGY_RECORD_AFTER_UNLOCK
  atomic { record(i) };
#endif
  unit = 0
}
#endif

/*
 * A launch makes its user's data directory of revision r (confine-hook's userdata, as the
 * user): under the user's lock, if the user's mark is not r, the old directory is set aside
 * and a copy made (two steps: the copy takes time), then the mark says r. No app of the user
 * may be running then: it would lose what it writes.
 */
inline no_app_of(u) {
  for (j : 0 .. NL - 1) {
    CHECK(UOF(j) != u || apprev[j] == 0)
  }
}

inline make_data(i, r) {
#ifndef BUGGY_NO_DATA_LOCK
  atomic { ulock[UOF(i)] == FREE -> ulock[UOF(i)] = i };
#endif
  if
  :: udata[UOF(i)] != r ->
     atomic { no_app_of(UOF(i)); udata[UOF(i)] = 0 };   /* aside; copying */
     atomic { no_app_of(UOF(i)); udata[UOF(i)] = r }    /* renamed in; marked */
  :: else
  fi;
#ifndef BUGGY_NO_DATA_LOCK
  ulock[UOF(i)] = FREE
#else
  skip
#endif
}

/*
 * The daemon enters the critical section (task wait-for-apps; with blk, the block behaviour,
 * also the re-check every critical task makes after a restart). Sets ok when entered, leaves
 * it false when the change was aborted while waiting.
 */
#ifdef BUGGY_UNLOCKED_CHECK
#define VACANT vacant
#else
#define VACANT (cg == 0)
#endif

inline enter_cs(blk, may_abort, ok) {
  ok = false;
  do
  :: /* the handler (re)starts: events from now on count (the engine's generation check) */
#ifdef BUGGY_UNLOCKED_CHECK
     vacant = (cg == 0);
#endif
     atomic {
       EX_FREE -> EX_TAKE; dev = false;
       if
       :: blk -> inhibited = true   /* block: the marker goes in while apps still drain */
       :: else
       fi
     };
#if !defined(TRACK_V2) && !defined(TRACK_POLL) && !defined(SYSTEMD) && \
    !defined(BUGGY_NO_ARM) && !defined(BUGGY_ARM_AFTER_READ)
     running = true;                /* v1: create snap.NAME.running, then read cgroup.procs */
#endif
     if
     :: VACANT ->                   /* read cgroup.procs (under the lock): empty */
        atomic {
          inhibited = true;         /* write the marker (temp + rename) */
          running = false;          /* stale: the cgroup is empty */
          in_cs = true;
          CHECK(cg == 0);
          EX_DROP;
          ok = true;
          vacant = false
        };
        break
     :: else ->
#ifdef BUGGY_ARM_AFTER_READ
        running = true;
#endif
        atomic { EX_DROP; vacant = false };
        if
#ifdef TRACK_POLL
        :: true -> skip             /* the poll timer fires */
#else
        :: dev -> skip              /* woken by the event */
#endif
        :: may_abort && abort_req ->
           unlink_inhibited();      /* undo of wait-for-apps */
           break
        fi
     fi
  od
}

active proctype daemon() {
  byte j;
  bool ok, vacant;
restart:
  {
    if
    :: started ->
       /* start-up (no lock: it only removes markers and rescans): rebuild the picture
          from the kernel, then resume the change */
       running = (cg != 0);
       if
       :: round == ROUNDS || (phase == P_WAIT && !BLOCKING) -> unlink_inhibited()
       :: else
       fi
    :: else
    fi;
    started = true;
    do
    :: round == ROUNDS -> break
    :: round < ROUNDS && phase == P_WAIT ->
       enter_cs(BLOCKING, true, ok);
       if
       :: ok -> phase = P_CS                               /* commit: Done */
       :: else -> atomic { abort_req = false; round++ }      /* commit: Undone */
       fi
    :: phase == P_CS ->
#ifndef BUGGY_NO_REENTER
       if
       :: !in_cs && inhibited -> in_cs = true                /* after a restart: the marker
                                                                stayed, so no app joined */
       :: !in_cs && !inhibited -> enter_cs(BLOCKING, false, ok) /* it went (a reboot): re-enter */
       :: else
       fi;
#else
       in_cs = true;
#endif
       CHECK(cg == 0);
       cur = round + 1;                                      /* copy data, link */
       phase = P_LIFT
    :: phase == P_LIFT ->
       in_cs = false;
       unlink_inhibited();                                   /* allow-launches */
       atomic { round++; phase = P_WAIT }
    od;
    goto finished
  } unless {
    atomic {
      (crash_req == 1 || (crash_req == 2 && sh == 0)) ->
      ex = false;                        /* the kernel drops the dead holder's flock */
      in_cs = false;
      if
      :: crash_req == 2 ->               /* reboot: /run is empty again; the kernel forgets */
         running = false;
         release_queued = false;
         unlink_inhibited()
      :: else
      fi;
      crash_req = 0
    }
  };
  goto restart;
finished:
  skip
}

/*
 * A launch of an app: confine-hook's steps 2-7, then the app, which exits.
 * Apps that exist across a reboot in this model stand for apps started again after the boot,
 * before the daemon was back.
 */
proctype launcher(byte i) {
  byte n, myrev, early, j;
#ifdef SYSTEMD
  byte unit;                                        /* the unit it joined */
#endif
again:
#ifdef BUGGY_EARLY_REV
  myrev = cur;
#endif
#ifdef BUGGY_DATA_BEFORE_JOIN
  early = cur;
  make_data(i, early);
#endif
#if defined(BUGGY_NO_LOCK)
  if                                                /* 3, without 2 */
  :: inhibited ->
#else
  acquire_sh();                                     /* 2 */
#ifdef STOP
  if
  :: i == 0 && !halted -> halted = true; false    /* SIGSTOP, never resumed */
  :: true
  fi;
#endif
  if
  :: atomic { inhibited -> release_sh() } ->        /* 3 */
#endif
     atomic { larmed[i] = true; lev[i] = false };   /* arm the watch on runctl */
#ifndef BUGGY_NO_RECHECK
     if
     :: !inhibited                                  /* re-check after arming: gone */
     :: else -> lev[i]                              /* wait for its IN_DELETE */
     fi;
#else
     lev[i];
#endif
     atomic { larmed[i] = false; lev[i] = false };
     goto again
  :: else
  fi;
#if defined(SYSTEMD)
  sd_join(i);                                       /* 4-6 */
#elif defined(BUGGY_NO_LOCK) || defined(BUGGY_JOIN_AFTER_UNLOCK)
#ifdef BUGGY_JOIN_AFTER_UNLOCK
  release_sh();                                     /* 6, too early */
#endif
  join(i);                                          /* 4 */
  running = true;                                   /* 5 */
#else
  /*
   * Steps 4-6 are one step here: while the launcher holds the lock nobody else can act on
   * what they change, except the agent and app exits, which may still come before or after.
   */
  atomic {
    join(i);                                        /* 4 */
    if
    :: running = true; release_sh()                 /* 5, 6 */
#ifndef NO_DIE
    :: leave(i); release_sh(); finish(i)            /* dies: exit; the kernel drops the flock */
#endif
    fi
  };
#endif
#ifdef SYSTEMD
  atomic {                                          /* on to the app */
    app = app | (1 << i); untracked = app & ~cg;
#ifndef BUGGY_EARLY_REV
    myrev = cur                                     /* 7: read current after the join */
#else
    skip
#endif
  };
#elif !defined(BUGGY_EARLY_REV)
  myrev = cur;                                      /* 7: read current after the join */
#endif
#if defined(DATA) && !defined(BUGGY_DATA_BEFORE_JOIN)
  make_data(i, myrev);                              /* 7: the user's data, then exec */
#endif
  /* the app runs; then it exits */
#ifdef DATA
  apprev[i] = myrev;
#endif
  atomic {
    CHECK(myrev == cur);                            /* never refreshed under it */
#ifdef DATA
    CHECK(udata[UOF(i)] == myrev);                  /* it ran with its revision's data */
    apprev[i] = 0;
#endif
    leave(i);
    myrev = 0;
    finish(i)
  };
done:
  skip
}

/* cgroup v1: the kernel runs refresh-release-agent for an emptied cgroup. */
#if !defined(TRACK_V2) && !defined(TRACK_POLL) && !defined(SYSTEMD)
active proctype agent() {
end:
  do
  :: atomic {
       release_queued -> release_queued = false;
       if
       :: running -> running = false; dev = true   /* unlink: the daemon's IN_DELETE */
       :: else                                      /* ENOENT: no event */
       fi
     }
  od
}
#endif

/* The environment: at most one daemon crash or reboot, at most one abort. */
#ifndef NO_CRASH
active proctype crasher() {
  if
  :: crash_req = 1
  :: crash_req = 2
  :: skip
  fi
}
#endif

#ifndef NO_ABORT
active proctype aborter() {
  if
  :: abort_req = true
  :: skip
  fi
}
#endif

/* The invariant, for runs compiled without the claims (-DNOCLAIM). */
#ifndef CLAIM_ONLY
active proctype monitor() {
end:
#ifdef SYSTEMD
  atomic { !SAFE -> assert(!(in_cs && cg != 0)); assert(!(in_cs && untracked != 0)) }
#else
  atomic { !SAFE -> assert(SAFE) }
#endif
}
#endif

init {
  byte k;
  atomic {
    for (k : 0 .. NL - 1) {
      run launcher(k);
#ifdef SYSTEMD
      run manager(k, M_USER);
      run manager(k, M_SYSTEM)
#endif
    }
  }
}

//! The scheduler over days of simulated time: the instants it fires at across Europe/Berlin's
//! daylight-saving changes, one run per instant with the weekly full winning, overlapping
//! fires skipped, one catch-up after a restart, and the driver woken by a manual clock.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Europe::Berlin;
use tokio_util::sync::CancellationToken;
use xenvault_jobs::model::{Job, Level, Retention, Schedule, Trigger};
use xenvault_jobs::scheduler::{
    Clock, Decision, Fire, ManualClock, RunningJobs, Scheduler, SharedScheduler, Skip, drive,
};

fn schedule(id: &str, cron: &str, level: Level) -> Schedule {
    Schedule {
        id: id.into(),
        name: id.into(),
        cron: cron.into(),
        timezone: "Europe/Berlin".into(),
        enabled: true,
        level,
        retention: Retention { last: 3, ..Default::default() },
    }
}

/// A job with a five-minute incremental and a Sunday 02:30 full, read in Berlin time.
fn job() -> Job {
    let toml = r#"
        id = "j1"
        name = "web"
        pool = "prod"
        repository = "main"
        selection = { vms = ["web01"] }
    "#;
    let mut job: Job = toml::from_str(toml).unwrap();
    job.schedules = vec![schedule("every5", "*/5 * * * *", Level::Inc), schedule("weekly", "30 2 * * 0", Level::Full)];
    job
}

fn berlin(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Berlin.with_ymd_and_hms(y, mo, d, h, mi, 0).earliest().unwrap().with_timezone(&Utc)
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

/// Steps the scheduler from `from` to `until`, every run ending at once; returns the
/// started fires and the skipped ones.
fn step(scheduler: &mut Scheduler, until: DateTime<Utc>) -> (Vec<Fire>, Vec<(Fire, Skip)>) {
    let (mut started, mut skipped) = (Vec::new(), Vec::new());
    while let Some(at) = scheduler.next_wake().filter(|at| *at <= until) {
        for decision in scheduler.due(at) {
            match decision {
                Decision::Start(fire, _claim) => started.push(fire),
                Decision::Skipped(fire, why) => skipped.push((fire, why)),
            }
        }
    }
    (started, skipped)
}

fn assert_every_five_minutes(fires: &[Fire]) {
    for pair in fires.windows(2) {
        let gap = pair[1].scheduled_for - pair[0].scheduled_for;
        assert_eq!(gap.num_seconds(), 300, "{} then {}", pair[0].scheduled_for, pair[1].scheduled_for);
    }
}

#[test]
fn spring_forward_keeps_the_rhythm_and_runs_the_full_after_the_gap() {
    // 2026-03-29: Berlin jumps from 02:00 CET to 03:00 CEST (01:00 UTC).
    let start = berlin(2026, 3, 29, 0, 30);
    let mut scheduler = Scheduler::new(RunningJobs::default());
    scheduler.set_job(&job(), start).unwrap();
    let (started, skipped) = step(&mut scheduler, berlin(2026, 3, 29, 3, 30));

    // 00:35 CET .. 03:30 CEST is two real hours: 24 runs, five minutes apart on the real time line.
    assert_eq!(started.len(), 24);
    assert_eq!(started[0].scheduled_for, utc(2026, 3, 28, 23, 35));
    assert_eq!(started.last().unwrap().scheduled_for, utc(2026, 3, 29, 1, 30));
    assert_every_five_minutes(&started);
    // 02:30 does not exist that night: the full runs at the first instant after the gap,
    // 03:00 CEST, in place of that instant's incremental.
    let fulls: Vec<&Fire> = started.iter().filter(|f| f.level == Level::Full).collect();
    assert_eq!(fulls.len(), 1);
    assert_eq!(fulls[0].scheduled_for, utc(2026, 3, 29, 1, 0));
    assert_eq!(fulls[0].schedule_id, "weekly");
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].0.schedule_id, "every5");
    assert_eq!(skipped[0].1, Skip::SameInstant { ran: "weekly".into() });
    assert!(started.iter().all(|f| f.trigger == Trigger::Schedule));
}

#[test]
fn fall_back_runs_the_repeated_hour_once_for_the_full_and_twice_for_the_interval() {
    // 2026-10-25: Berlin goes back from 03:00 CEST to 02:00 CET (01:00 UTC); 02:00-03:00 happens twice.
    let start = berlin(2026, 10, 25, 1, 0);
    let mut scheduler = Scheduler::new(RunningJobs::default());
    scheduler.set_job(&job(), start).unwrap();
    let until = utc(2026, 10, 25, 3, 0); // 04:00 CET
    let (started, skipped) = step(&mut scheduler, until);

    // 23:00 UTC .. 03:00 UTC is four real hours (five on the wall clock): 48 runs.
    assert_eq!(started.len(), 48);
    assert_every_five_minutes(&started);
    // 02:30 happens twice; the full runs at the first one (00:30 UTC) only.
    let fulls: Vec<DateTime<Utc>> =
        started.iter().filter(|f| f.level == Level::Full).map(|f| f.scheduled_for).collect();
    assert_eq!(fulls, [utc(2026, 10, 25, 0, 30)]);
    assert_eq!(skipped.len(), 1);

    // The next full is a week later, at 02:30 CET.
    let (next_week, _) = step(&mut scheduler, berlin(2026, 11, 1, 3, 0));
    let fulls: Vec<DateTime<Utc>> =
        next_week.iter().filter(|f| f.level == Level::Full).map(|f| f.scheduled_for).collect();
    assert_eq!(fulls, [utc(2026, 11, 1, 1, 30)]);
}

#[test]
fn a_fire_while_the_job_runs_is_skipped() {
    let start = berlin(2026, 6, 1, 12, 0);
    let running = RunningJobs::default();
    let mut scheduler = Scheduler::new(running.clone());
    scheduler.set_job(&job(), start).unwrap();

    let mut first = scheduler.due(berlin(2026, 6, 1, 12, 5));
    let Some(Decision::Start(fire, claim)) = first.pop() else { panic!("expected a start: {first:?}") };
    assert_eq!(fire.scheduled_for, berlin(2026, 6, 1, 12, 5));
    assert!(running.is_running("j1"));
    // Something else (the API's "run now") cannot start it either.
    assert!(running.claim("j1").is_none());

    // Still running at the next two instants.
    for minute in [10, 15] {
        let decisions = scheduler.due(berlin(2026, 6, 1, 12, minute));
        assert!(matches!(decisions.as_slice(), [Decision::Skipped(_, Skip::Running)]), "{decisions:?}");
    }
    drop(claim);
    assert!(!running.is_running("j1"));
    let decisions = scheduler.due(berlin(2026, 6, 1, 12, 20));
    assert!(matches!(decisions.as_slice(), [Decision::Start(f, _)] if f.scheduled_for == berlin(2026, 6, 1, 12, 20)));
}

#[test]
fn a_restart_catches_up_exactly_one_missed_run() {
    let job = job();
    // The last run was for 09:05; the server was down until 11:02.
    let last_fired: BTreeMap<(String, String), DateTime<Utc>> =
        [(("j1".to_owned(), "every5".to_owned()), berlin(2026, 6, 2, 9, 5))].into();
    let now = berlin(2026, 6, 2, 11, 2);

    let mut scheduler = Scheduler::new(RunningJobs::default());
    scheduler.set_job(&job, now).unwrap();
    let mut decisions = scheduler.catch_up(&last_fired, now);
    assert_eq!(decisions.len(), 1, "one catch-up expected: {decisions:?}");
    let Some(Decision::Start(fire, claim)) = decisions.pop() else { panic!("a start expected") };
    assert_eq!(fire.trigger, Trigger::CatchUp);
    assert_eq!(fire.scheduled_for, berlin(2026, 6, 2, 11, 0));
    assert_eq!(fire.level, Level::Inc);
    drop(claim);
    // Nothing else is due until 11:05.
    assert!(scheduler.due(now).is_empty());
    assert_eq!(scheduler.next_wake(), Some(berlin(2026, 6, 2, 11, 5)));

    // A weekly full missed over the weekend: one run, at the full's level.
    let last_fired: BTreeMap<(String, String), DateTime<Utc>> = [
        (("j1".to_owned(), "every5".to_owned()), berlin(2026, 6, 6, 23, 55)),
        (("j1".to_owned(), "weekly".to_owned()), berlin(2026, 5, 31, 2, 30)),
    ]
    .into();
    let now = berlin(2026, 6, 8, 8, 1);
    let mut scheduler = Scheduler::new(RunningJobs::default());
    scheduler.set_job(&job, now).unwrap();
    let decisions = scheduler.catch_up(&last_fired, now);
    let starts: Vec<&Fire> =
        decisions.iter().filter_map(|d| if let Decision::Start(f, _) = d { Some(f) } else { None }).collect();
    assert_eq!(starts.len(), 1, "{decisions:?}");
    assert_eq!((starts[0].level, starts[0].scheduled_for), (Level::Full, berlin(2026, 6, 7, 2, 30)));

    // Catch-up switched off: nothing.
    let mut no_catch_up = job.clone();
    no_catch_up.settings.catch_up_missed = false;
    let mut scheduler = Scheduler::new(RunningJobs::default());
    scheduler.set_job(&no_catch_up, now).unwrap();
    assert!(scheduler.catch_up(&last_fired, now).is_empty());
}

#[test]
fn a_bad_cron_line_or_zone_is_refused() {
    let mut scheduler = Scheduler::new(RunningJobs::default());
    let mut bad = job();
    bad.schedules[0].cron = "*/5 * * *".into();
    let e = scheduler.set_job(&bad, Utc::now()).unwrap_err();
    assert!(e.to_string().contains("cron line"), "{e}");
    let mut bad = job();
    bad.schedules[0].timezone = "Europe/Atlantis".into();
    let e = scheduler.set_job(&bad, Utc::now()).unwrap_err();
    assert!(e.to_string().contains("Europe/Atlantis"), "{e}");
}

#[tokio::test]
async fn the_driver_wakes_when_the_clock_reaches_a_fire_and_sees_new_jobs() {
    let start = berlin(2026, 6, 1, 12, 1);
    let clock = Arc::new(ManualClock::new(start));
    let scheduler = SharedScheduler::new(Scheduler::new(RunningJobs::default()));
    let (sender, mut fires) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let driver = tokio::spawn(drive(
        scheduler.clone(),
        clock.clone() as Arc<dyn Clock>,
        move |decision| {
            if let Decision::Start(fire, _claim) = decision {
                sender.send(fire).unwrap();
            }
        },
        stop.clone(),
    ));
    // Added while the driver sleeps with nothing to do.
    scheduler.set_job(&job(), clock.now()).unwrap();
    clock.set(berlin(2026, 6, 1, 12, 5));
    assert_eq!(fires.recv().await.unwrap().scheduled_for, berlin(2026, 6, 1, 12, 5));
    // A jump over three instants fires once.
    clock.set(berlin(2026, 6, 1, 12, 21));
    assert_eq!(fires.recv().await.unwrap().scheduled_for, berlin(2026, 6, 1, 12, 20));
    scheduler.remove_job("j1");
    stop.cancel();
    driver.await.unwrap();
    assert!(fires.try_recv().is_err());
}

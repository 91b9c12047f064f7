//! What the demo's administrator does, through the same admin API as `lockstep put`: seed a
//! price list, then after every rotation edit a price (so every activation brings a new
//! version), and once schedule a change for an exact activation time.

use lockstep::wire::{
    self, Blob, Entry, ImportRequest, PutRequest, RotationRecord, StatusResponse, WriteResponse,
};

use super::tally::ScheduledChange;
use crate::cli::{Cli, CliError};
use crate::clock::{self, format_us};

pub const PRICES: &[(&str, &str)] = &[
    ("price:apple", "1.25"),
    ("price:pear", "2.10"),
    ("price:plum", "0.80"),
    ("shipping:eu", "4.90"),
    ("promo:winter", "10%"),
];

/// The change scheduled for an exact time, on the rotation after this many.
const SCHEDULE_ON_ROTATION: u64 = 2;
const SCHEDULED_KEY: &str = "promo:winter";
const SCHEDULED_VALUE: &str = "25%";
/// Attempts at scheduling it, each one activation later than the last.
const SCHEDULE_TRIES: u32 = 3;

/// Comma-separated keys for the web servers to read, `price:apple` (edited every cycle) first.
pub fn keys() -> String {
    PRICES.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(",")
}

pub struct Script {
    admin: Cli,
    rotations_seen: usize,
    tick: u64,
    pub scheduled: Option<ScheduledChange>,
}

fn err(e: CliError) -> String {
    e.0
}

impl Script {
    pub fn new(url: &str, token: &str) -> Script {
        Script {
            admin: Cli::new(url.to_owned(), Some(token.to_owned()), false),
            rotations_seen: 0,
            tick: 0,
            scheduled: None,
        }
    }

    /// Imports the price list into production; returns what it did.
    pub fn seed(&self) -> Result<String, String> {
        let entries = PRICES
            .iter()
            .map(|(k, v)| Entry {
                key: Blob::Text(k.to_string()),
                value: Blob::Text(v.to_string()),
            })
            .collect();
        let _: serde_json::Value = self
            .admin
            .post(
                &wire::admin_path(wire::ADMIN_IMPORT),
                &ImportRequest {
                    entries,
                    urgent: false,
                },
            )
            .map_err(err)?;
        let list: Vec<String> = PRICES.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Ok(format!(
            "production: seeded {} keys ({})",
            PRICES.len(),
            list.join(", ")
        ))
    }

    /// Rotations the data server logged since the last call.
    pub fn new_rotations(&mut self) -> Result<Vec<RotationRecord>, String> {
        let log: Vec<RotationRecord> = self
            .admin
            .get(&wire::admin_path(wire::ADMIN_ROTATIONS), &[])
            .map_err(err)?;
        let new = log
            .into_iter()
            .skip(self.rotations_seen)
            .collect::<Vec<_>>();
        self.rotations_seen += new.len();
        Ok(new)
    }

    /// The administrator's move after a rotation; returns (data-server time, what it did).
    pub fn after_rotation(&mut self) -> Result<Vec<(i64, String)>, String> {
        self.tick += 1;
        let mut done = Vec::new();
        if self.tick == SCHEDULE_ON_ROTATION {
            done.push(self.schedule_change()?);
        }
        let price = format!("{:.2}", 1.25 + (self.tick % 7) as f64 * 0.05);
        self.put("price:apple", &price, None)?;
        done.push((
            clock::now_us(),
            format!("put price:apple={price} in production (active everywhere by the second activation)"),
        ));
        Ok(done)
    }

    /// Schedules a change for the activation after the next: far enough ahead that the
    /// version staged for it is built by a later rotation, as with a change scheduled days
    /// ahead.
    fn schedule_change(&mut self) -> Result<(i64, String), String> {
        let status: StatusResponse = self
            .admin
            .get(&wire::admin_path(wire::ADMIN_STATUS), &[])
            .map_err(err)?;
        let interval_us = status.sync.interval_us;
        let mut at_us = status.sync.activation_time_us + interval_us;
        // On a loaded machine the put can reach the data server after that time has passed
        // (it refuses a time in the past): then aim one activation further.
        let mut tries = 1;
        let answer = loop {
            match self.put(SCHEDULED_KEY, SCHEDULED_VALUE, Some(at_us)) {
                Ok(answer) => break answer,
                Err(_) if tries < SCHEDULE_TRIES && at_us <= clock::now_us() + interval_us => {
                    at_us += interval_us;
                    tries += 1;
                }
                Err(e) => return Err(format!("cannot schedule {SCHEDULED_KEY}: {e}")),
            }
        };
        let promised = match answer.live_by_us {
            Some(t) if t == at_us => "goes live at exactly that activation".to_owned(),
            Some(t) => format!("the data server says it goes live at {}", format_us(t)),
            None => "the data server did not say when it goes live".to_owned(),
        };
        self.scheduled = Some(ScheduledChange {
            key: SCHEDULED_KEY.into(),
            value: SCHEDULED_VALUE.into(),
            at_us,
        });
        Ok((
            clock::now_us(),
            format!(
                "schedule {SCHEDULED_KEY}={SCHEDULED_VALUE} for {} ({promised})",
                super::report::hms(at_us)
            ),
        ))
    }

    fn put(&self, key: &str, value: &str, at_us: Option<i64>) -> Result<WriteResponse, String> {
        let req = PutRequest {
            key: Blob::Text(key.into()),
            value: Blob::Text(value.into()),
            at: at_us.map(format_us),
            urgent: false,
        };
        self.admin
            .post(&wire::admin_path(wire::ADMIN_PUT), &req)
            .map_err(err)
    }
}

//! What a demo web process tells the driver: one [`Event`] per line on its stdout.
//!
//! Both ends use this one type. The web process prints events with `Display`, the driver parses
//! them with `FromStr`, and every field is named on the line and checked in order, so a change
//! on one side that the other does not follow fails the round-trip test (and, at run time, the
//! demo stops with the line it could not read) instead of being read as zeros.

use std::fmt;
use std::str::FromStr;

/// Keys and values as one read saw them, in the order the keys were asked for.
pub type Values = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handle is open and reads see `active`.
    Ready { active: u64, values: Values },
    /// `version` is staged for the activation at `activation_us` (the data server's clock) and
    /// armed for `planned_ns` on this host's CLOCK_MONOTONIC.
    Staged {
        version: u64,
        activation_us: i64,
        planned_ns: i64,
    },
    /// Reads switched to another version.
    Switched(Switch),
    /// The client's clock estimate and retrieval counters.
    Stats {
        offset_us: i64,
        error_us: i64,
        checkins: u64,
        failures: u64,
        /// The library's lagging flag. Not part of a switch: the retrieval thread sets and
        /// clears it a moment after readers already see the version it concerns.
        lagging: bool,
    },
}

/// A switch of versions as the reader observed it.
///
/// The library swaps versions at an instant no reader sees directly; what a reader can prove is
/// the bracket around it: the switch came after the start of the last read that still saw
/// `from`, and before the end of the first read that saw `to` (both CLOCK_MONOTONIC, which every
/// process on a host shares, so the driver compares brackets of different processes exactly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    pub from: u64,
    pub to: u64,
    pub last_old_read_ns: i64,
    pub first_new_read_ns: i64,
    /// Where the library had armed `to`; `None` when `to` was never seen armed (caught up).
    pub planned_ns: Option<i64>,
    /// Every demo key as the first read of `to` saw it, from one pinned version.
    pub values: Values,
}

impl Switch {
    /// Bracket width: how precisely the reader observed the switch.
    pub fn width_ns(&self) -> i64 {
        self.first_new_read_ns - self.last_old_read_ns
    }
}

/// The value of `key` in `values`, if the read found it.
pub fn value_of<'a>(values: &'a Values, key: &str) -> Option<&'a str> {
    values
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Ready { active, values } => {
                write!(f, "READY active={active} values={}", encode_values(values))
            }
            Event::Staged {
                version,
                activation_us,
                planned_ns,
            } => write!(
                f,
                "STAGED version={version} activation_us={activation_us} planned_ns={planned_ns}"
            ),
            Event::Switched(s) => write!(
                f,
                "SWITCHED from={} to={} last_old_read_ns={} first_new_read_ns={} planned_ns={} values={}",
                s.from,
                s.to,
                s.last_old_read_ns,
                s.first_new_read_ns,
                s.planned_ns.map_or("none".to_owned(), |p| p.to_string()),
                encode_values(&s.values)
            ),
            Event::Stats {
                offset_us,
                error_us,
                checkins,
                failures,
                lagging,
            } => write!(
                f,
                "STATS offset_us={offset_us} error_us={error_us} checkins={checkins} failures={failures} lagging={}",
                u8::from(*lagging)
            ),
        }
    }
}

impl FromStr for Event {
    type Err = String;

    fn from_str(line: &str) -> Result<Event, String> {
        let mut words = line.split(' ');
        let tag = words.next().unwrap_or("");
        let mut f = Fields(words);
        let event = match tag {
            "READY" => Event::Ready {
                active: f.number("active")?,
                values: decode_values(f.take("values")?)?,
            },
            "STAGED" => Event::Staged {
                version: f.number("version")?,
                activation_us: f.number("activation_us")?,
                planned_ns: f.number("planned_ns")?,
            },
            "SWITCHED" => Event::Switched(Switch {
                from: f.number("from")?,
                to: f.number("to")?,
                last_old_read_ns: f.number("last_old_read_ns")?,
                first_new_read_ns: f.number("first_new_read_ns")?,
                planned_ns: match f.take("planned_ns")? {
                    "none" => None,
                    n => Some(parse_number("planned_ns", n)?),
                },
                values: decode_values(f.take("values")?)?,
            }),
            "STATS" => Event::Stats {
                offset_us: f.number("offset_us")?,
                error_us: f.number("error_us")?,
                checkins: f.number("checkins")?,
                failures: f.number("failures")?,
                lagging: f.flag("lagging")?,
            },
            other => return Err(format!("unknown event {other:?}")),
        };
        match f.0.next() {
            None => Ok(event),
            Some(extra) => Err(format!("unexpected field {extra:?} after the {tag} event")),
        }
    }
}

/// The `name=value` words of one line, taken in the order the event declares them.
struct Fields<'a>(std::str::Split<'a, char>);

impl<'a> Fields<'a> {
    fn take(&mut self, name: &str) -> Result<&'a str, String> {
        let word = self
            .0
            .next()
            .ok_or_else(|| format!("missing field {name}"))?;
        match word.split_once('=') {
            Some((n, value)) if n == name => Ok(value),
            _ => Err(format!("expected field {name}, found {word:?}")),
        }
    }

    fn flag(&mut self, name: &str) -> Result<bool, String> {
        match self.take(name)? {
            "0" => Ok(false),
            "1" => Ok(true),
            other => Err(format!("{name}={other}: expected 0 or 1")),
        }
    }

    fn number<T: FromStr>(&mut self, name: &str) -> Result<T, String> {
        let word = self.take(name)?;
        parse_number(name, word)
    }
}

fn parse_number<T: FromStr>(name: &str, word: &str) -> Result<T, String> {
    word.parse()
        .map_err(|_| format!("{name}={word}: not a number"))
}

/// `key=value` pairs joined by `,`; the separators, spaces and `%` inside a key or value are
/// escaped as `%XX`, so any bytes a data server holds fit on one line of the protocol.
fn encode_values(values: &Values) -> String {
    values
        .iter()
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn decode_values(s: &str) -> Result<Values, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("value {pair:?} is not key=value"))?;
            Ok((unescape(k)?, unescape(v)?))
        })
        .collect()
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'%' | b',' | b'=') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once unescaped"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values {
        vec![
            ("price:apple".into(), "1.25".into()),
            ("promo:winter".into(), "25%".into()),
            (
                "odd, key=".into(),
                "a value with spaces\nand a newline".into(),
            ),
            ("".into(), "".into()),
        ]
    }

    /// One of each variant. The match below has no wildcard, so a new variant does not compile
    /// until it is added here.
    fn every_variant() -> Vec<Event> {
        let events = vec![
            Event::Ready {
                active: 3,
                values: values(),
            },
            Event::Ready {
                active: 0,
                values: Vec::new(),
            },
            Event::Staged {
                version: 4,
                activation_us: 1_795_737_600_000_000,
                planned_ns: -12,
            },
            Event::Switched(Switch {
                from: 3,
                to: 4,
                last_old_read_ns: 1_000_000_001,
                first_new_read_ns: 1_000_250_002,
                planned_ns: Some(1_000_100_000),
                values: values(),
            }),
            Event::Switched(Switch {
                from: 4,
                to: 6,
                last_old_read_ns: 5,
                first_new_read_ns: 9,
                planned_ns: None,
                values: Vec::new(),
            }),
            Event::Stats {
                offset_us: -7_200_000_123,
                error_us: 250,
                checkins: 17,
                failures: 0,
                lagging: true,
            },
        ];
        let mut seen = [false; 4];
        for e in &events {
            let i = match e {
                Event::Ready { .. } => 0,
                Event::Staged { .. } => 1,
                Event::Switched(_) => 2,
                Event::Stats { .. } => 3,
            };
            seen[i] = true;
        }
        assert!(seen.iter().all(|s| *s), "an event variant has no example");
        events
    }

    #[test]
    fn every_event_survives_the_line_protocol_unchanged() {
        for event in every_variant() {
            let line = event.to_string();
            assert!(!line.contains('\n'), "{line:?} spans lines");
            assert_eq!(line.parse::<Event>(), Ok(event), "{line}");
        }
    }

    #[test]
    fn a_line_from_another_protocol_is_an_error_not_zeros() {
        for line in [
            "",
            "ACTIVE 4 123 456 0 price:apple=1.25",
            "READY 4",
            "STAGED version=4 activation_us=5",
            "STAGED version=4 planned_ns=6 activation_us=5",
            "STATS offset_us=1 error_us=2 checkins=3 failures=4 lagging=0 extra=5",
            "STATS offset_us=1 error_us=2 checkins=3 failures=4 lagging=2",
            "SWITCHED from=3 to=4 last_old_read_ns=1 first_new_read_ns=2 planned_ns=soon values=",
            "READY active=3 values=price:apple",
            "READY active=3 values=k=%Z1",
        ] {
            assert!(line.parse::<Event>().is_err(), "{line:?} parsed");
        }
    }
}

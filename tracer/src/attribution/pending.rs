//! Faults taken while Redis read a client's command before its key was parsed wait here,
//! per client, for that client's own command; they are never given to another client.
//! A build that parses a pipeline ahead (Valkey 9) tags each with its command's index in
//! the batch, so it waits for that command, not the batch's first. Pure: no I/O.

use std::{collections::HashMap, sync::Arc};

use super::context::{Attribution, Awaiting, Resolved, Reveal};

/// One waiting item.
#[derive(Debug)]
struct Waiting<T> {
    argc: u32,
    /// `stat_numcommands` the waited-for command runs with.
    runs_at: u64,
    fallback: Arc<Attribution>,
    item: T,
}

/// Waiting items by client, bounded.
#[derive(Debug)]
pub struct PendingFaults<T> {
    by_client: HashMap<u64, Vec<Waiting<T>>>,
    total: usize,
    cap: usize,
}

impl<T> PendingFaults<T> {
    /// At most `cap` items wait at once.
    pub fn new(cap: usize) -> Self {
        PendingFaults {
            by_client: HashMap::new(),
            total: 0,
            cap,
        }
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.total
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Whether any waiting item matches.
    pub fn any(&self, mut f: impl FnMut(&T) -> bool) -> bool {
        self.by_client.values().flatten().any(|w| f(&w.item))
    }

    /// Makes `item` wait for `awaiting.client`'s command. Gives it back when full.
    pub fn push(&mut self, awaiting: &Awaiting, item: T) -> Result<(), T> {
        if self.total >= self.cap {
            return Err(item);
        }
        self.total += 1;
        self.by_client
            .entry(awaiting.client)
            .or_default()
            .push(Waiting {
                argc: awaiting.argc,
                runs_at: awaiting.seq + u64::from(awaiting.batch),
                fallback: Arc::clone(&awaiting.fallback),
                item,
            });
        Ok(())
    }

    /// One of the client's commands is known. `stat_numcommands` says which command
    /// each item waits for: a running command takes its own items and settles the ones
    /// of commands that ran before it without a fault (their fallback); a command parsed
    /// ahead takes only its own.
    pub fn resolve(&mut self, resolved: &Resolved) -> Vec<(T, Arc<Attribution>)> {
        let now = match resolved.reveal {
            Reveal::Running { seq } => seq,
            Reveal::Parsed { seq, batch } => seq + u64::from(batch),
        };
        let running = matches!(resolved.reveal, Reveal::Running { .. });
        self.take_if(
            resolved.client,
            |w| w.runs_at == now || (running && w.runs_at < now),
            |w| {
                if w.runs_at == now && w.argc <= resolved.argc {
                    Arc::clone(&resolved.command)
                } else {
                    // Waited at more arguments than this command has parsed, or for a
                    // command that ran without a fault, unseen.
                    Arc::clone(&w.fallback)
                }
            },
        )
    }

    /// The client parses its command `awaiting` from fewer arguments than some items
    /// waited at: those belong to a command that ran unseen.
    pub fn restarted(&mut self, awaiting: &Awaiting) -> Vec<(T, Arc<Attribution>)> {
        let runs_at = awaiting.seq + u64::from(awaiting.batch);
        self.take_if(
            awaiting.client,
            |w| w.runs_at < runs_at || (w.runs_at == runs_at && w.argc > awaiting.argc),
            |w| Arc::clone(&w.fallback),
        )
    }

    /// The client left: its items get their fallback.
    pub fn client_gone(&mut self, client: u64) -> Vec<(T, Arc<Attribution>)> {
        self.take(client, |w| Arc::clone(&w.fallback))
    }

    /// Everything, with fallbacks (end of the run).
    pub fn drain_all(&mut self) -> Vec<(T, Arc<Attribution>)> {
        let clients: Vec<u64> = self.by_client.keys().copied().collect();
        clients
            .into_iter()
            .flat_map(|c| self.client_gone(c))
            .collect()
    }

    fn take(
        &mut self,
        client: u64,
        give: impl FnMut(&Waiting<T>) -> Arc<Attribution>,
    ) -> Vec<(T, Arc<Attribution>)> {
        self.take_if(client, |_| true, give)
    }

    /// Removes the client's items that `due` selects, each with what `give` says.
    fn take_if(
        &mut self,
        client: u64,
        mut due: impl FnMut(&Waiting<T>) -> bool,
        mut give: impl FnMut(&Waiting<T>) -> Arc<Attribution>,
    ) -> Vec<(T, Arc<Attribution>)> {
        let Some(list) = self.by_client.get_mut(&client) else {
            return Vec::new();
        };
        let (done, kept): (Vec<_>, Vec<_>) = list.drain(..).partition(|w| due(w));
        if kept.is_empty() {
            self.by_client.remove(&client);
        } else {
            *list = kept;
        }
        self.total -= done.len();
        done.into_iter()
            .map(|w| {
                let at = give(&w);
                (w.item, at)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn awaiting(client: u64, argc: u32, name: &str) -> Awaiting {
        Awaiting {
            client,
            argc,
            seq: 100,
            batch: 0,
            fallback: Arc::new(Attribution {
                activity: name.into(),
                is_command: true,
                ..Attribution::phase("")
            }),
        }
    }

    fn resolved(client: u64, argc: u32, name: &str) -> Resolved {
        Resolved {
            client,
            argc,
            reveal: Reveal::Running { seq: 100 },
            command: Arc::new(Attribution {
                activity: name.into(),
                is_command: true,
                ..Attribution::phase("")
            }),
        }
    }

    #[test]
    fn items_wait_for_their_own_client_only() {
        let mut p = PendingFaults::new(10);
        p.push(&awaiting(1, 1, "SET"), "a1").unwrap();
        p.push(&awaiting(2, 0, "unknown-command"), "b1").unwrap();
        p.push(&awaiting(1, 1, "SET"), "a2").unwrap();
        assert_eq!(p.len(), 3);
        // Client 2's command says nothing about client 1's faults.
        let got = p.resolve(&resolved(2, 3, "GET"));
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0, got[0].1.activity.as_str()), ("b1", "GET"));
        let got = p.resolve(&resolved(1, 3, "SET"));
        assert_eq!(
            got.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec!["a1", "a2"]
        );
        assert!(p.is_empty());
    }

    #[test]
    fn a_client_gone_or_restarted_gets_fallbacks_and_the_cap_holds() {
        let mut p = PendingFaults::new(2);
        p.push(&awaiting(1, 1, "SET"), 1).unwrap();
        p.push(&awaiting(1, 0, "unknown-command"), 2).unwrap();
        assert_eq!(p.push(&awaiting(1, 0, "x"), 3), Err(3));
        // Parsing restarted at 0 arguments: the item at 1 was an earlier command's.
        let earlier = p.restarted(&awaiting(1, 0, "GET"));
        assert_eq!(earlier.len(), 1);
        assert_eq!((earlier[0].0, earlier[0].1.activity.as_str()), (1, "SET"));
        let gone = p.client_gone(1);
        assert_eq!(
            (gone[0].0, gone[0].1.activity.as_str()),
            (2, "unknown-command")
        );
        assert!(p.client_gone(1).is_empty());
        p.push(&awaiting(5, 1, "DEL"), 9).unwrap();
        assert_eq!(p.drain_all().len(), 1);
    }

    #[test]
    fn items_of_a_batch_parsed_ahead_wait_for_their_own_command() {
        let mut p = PendingFaults::new(10);
        // A batch of four parsed at seq 100: they will run as 100..=103.
        for (batch, item) in [(0, "first"), (1, "second"), (2, "third"), (3, "fourth")] {
            let w = Awaiting {
                batch,
                ..awaiting(7, 1, &format!("unseen-{item}"))
            };
            p.push(&w, item).unwrap();
        }
        // The third's key gets parsed: only its own item.
        let parsed = Resolved {
            reveal: Reveal::Parsed { seq: 100, batch: 2 },
            ..resolved(7, 3, "SET c")
        };
        let got = p.resolve(&parsed);
        assert_eq!((got[0].0, got[0].1.activity.as_str()), ("third", "SET c"));
        assert_eq!(got.len(), 1);
        // The first runs: its own item only.
        let got = p.resolve(&resolved(7, 3, "SET a"));
        assert_eq!((got[0].0, got[0].1.activity.as_str()), ("first", "SET a"));
        assert_eq!(got.len(), 1);
        // The fourth runs (103): the second (101) ran without a fault, unseen.
        let fourth = Resolved {
            reveal: Reveal::Running { seq: 103 },
            ..resolved(7, 3, "SET d")
        };
        let got: Vec<_> = p
            .resolve(&fourth)
            .into_iter()
            .map(|(i, a)| (i, a.activity.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("second", "unseen-second".into()),
                ("fourth", "SET d".into())
            ]
        );
        assert!(p.is_empty());
    }
}

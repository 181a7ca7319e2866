//! Faults taken while Redis read a client's command before its key was parsed wait here,
//! per client, for that client's own command; they are never given to another client.
//! Pure: no I/O.

use std::{collections::HashMap, sync::Arc};

use super::context::{Attribution, Awaiting, Resolved};

/// One waiting item.
#[derive(Debug)]
struct Waiting<T> {
    argc: u32,
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
                fallback: Arc::clone(&awaiting.fallback),
                item,
            });
        Ok(())
    }

    /// The client's command is known: its items get it.
    pub fn resolve(&mut self, resolved: &Resolved) -> Vec<(T, Arc<Attribution>)> {
        self.take(resolved.client, |w| {
            if w.argc <= resolved.argc {
                Arc::clone(&resolved.command)
            } else {
                // Waited at more arguments than this command has parsed: an earlier
                // command that ran without a fault.
                Arc::clone(&w.fallback)
            }
        })
    }

    /// The client is parsing again from `argc` arguments: items that waited at more
    /// arguments belong to its previous command, which ran unseen.
    pub fn restarted(&mut self, client: u64, argc: u32) -> Vec<(T, Arc<Attribution>)> {
        let Some(list) = self.by_client.get_mut(&client) else {
            return Vec::new();
        };
        let (earlier, kept): (Vec<_>, Vec<_>) = list.drain(..).partition(|w| w.argc > argc);
        *list = kept;
        self.total -= earlier.len();
        earlier.into_iter().map(|w| (w.item, w.fallback)).collect()
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
        mut give: impl FnMut(&Waiting<T>) -> Arc<Attribution>,
    ) -> Vec<(T, Arc<Attribution>)> {
        let Some(list) = self.by_client.remove(&client) else {
            return Vec::new();
        };
        self.total -= list.len();
        list.into_iter()
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
        let earlier = p.restarted(1, 0);
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
}

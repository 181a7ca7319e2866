//! A fork child of a Redis server held stopped, so that every first write of the parent
//! to a page is a copy-on-write for as long as the test wants.

use std::time::{Duration, Instant};

use crate::{
    Server,
    process::{child_of, proc_state, signal},
};

/// A fork child of a Redis server stopped with SIGSTOP; SIGCONT on drop (also when the
/// test panics, so no stopped child outlives the test).
pub struct StoppedChild(pub u32);

impl StoppedChild {
    /// Stops the (only) fork child of `server`, which must exist or appear within 5 s.
    pub fn of(server: &Server) -> StoppedChild {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(pid) = child_of(server.pid) {
                signal(pid, libc::SIGSTOP);
                let stopped = StoppedChild(pid);
                while proc_state(pid) != Some('T') {
                    assert!(
                        Instant::now() < deadline,
                        "child {pid} of redis-server {} did not stop (state {:?})",
                        server.pid,
                        proc_state(pid)
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                return stopped;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server {} has no fork child",
                server.pid
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for StoppedChild {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

/// BGSAVE on `con`, then stop the child: from here every first write of the parent to a
/// page is a copy-on-write.
pub fn bgsave_stopped(server: &Server, con: &mut redis::Connection) -> StoppedChild {
    let reply: String = redis::cmd("BGSAVE").query(con).unwrap();
    assert!(reply.contains("Background saving started"), "{reply}");
    StoppedChild::of(server)
}

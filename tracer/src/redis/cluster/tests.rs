//! Parsers against replies captured from real clusters (three masters made by
//! `redis-cli --cluster create`, a fourth node replicating the first, slot 100 being
//! migrated from the first master to the second), and against anything at all.

use proptest::prelude::*;

use super::*;

// Redis 7.0.15: the nodes' ids.
const M0: &str = "5094a37a35e4d16113f538292a7a55a1696e16e1";
const M1: &str = "25c4d5bd1bb8fca0b1f2a52d4863b6ccd6c8b349";
const M2: &str = "125a7e450445197d7e3bc4b1b28604134981b50e";
const R0: &str = "bad09b103cf26b98a1a1fae41f52530c0e8ab621";

fn resp(bytes: &[u8]) -> redis::Value {
    redis::parse_redis_value(bytes).expect("a captured reply parses as RESP")
}

fn node(id: &str, port: u16, primary: Option<&str>, slots: &[(u16, u16)]) -> ClusterNode {
    ClusterNode {
        id: id.into(),
        addr: format!("127.0.0.1:{port}"),
        role: if primary.is_some() {
            "replica"
        } else {
            "master"
        }
        .into(),
        primary_id: primary.map(str::to_string),
        slots: slots.to_vec(),
        myself: false,
    }
}

/// A map in the parsers' order (nodes by id) with `myself` set on `me`.
fn map_of(mut nodes: Vec<ClusterNode>, me: &str) -> ClusterMap {
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    for n in &mut nodes {
        n.myself = n.id == me;
    }
    ClusterMap { nodes }
}

/// The Redis 7.0 cluster, read on node `me`.
fn redis70(me: &str) -> ClusterMap {
    map_of(
        vec![
            node(M0, 21100, None, &[(0, 5460)]),
            node(M1, 21101, None, &[(5461, 10922)]),
            node(M2, 21102, None, &[(10923, 16383)]),
            node(R0, 21103, Some(M0), &[]),
        ],
        me,
    )
}

#[test]
fn redis_7_0_shards_and_nodes_agree() {
    let mut shards = ClusterMap::from_cluster_shards(resp(include_bytes!(
        "fixtures/redis-7.0-shards-master.resp"
    )))
    .unwrap();
    assert!(
        shards.nodes.iter().all(|n| !n.myself),
        "SHARDS names no node as myself"
    );
    assert!(shards.mark_myself(M0));
    assert_eq!(shards, redis70(M0));
    let nodes = include_str!("fixtures/redis-7.0-nodes-migrating.txt");
    assert_eq!(ClusterMap::from_cluster_nodes(nodes).unwrap(), redis70(M0));
    let nodes = include_str!("fixtures/redis-7.0-nodes-importing.txt");
    assert_eq!(ClusterMap::from_cluster_nodes(nodes).unwrap(), redis70(M1));
}

#[test]
fn redis_7_0_read_on_a_replica() {
    let mut shards = ClusterMap::from_cluster_shards(resp(include_bytes!(
        "fixtures/redis-7.0-shards-replica.resp"
    )))
    .unwrap();
    shards.mark_myself(R0);
    assert_eq!(shards, redis70(R0));
    let nodes = include_str!("fixtures/redis-7.0-nodes-replica.txt");
    let map = ClusterMap::from_cluster_nodes(nodes).unwrap();
    assert_eq!(map, redis70(R0));
    assert_eq!(map.myself().map(|n| n.role.as_str()), Some("replica"));
    assert_eq!(map.counts(), (3, 1));
}

#[test]
fn owner_of_is_the_master_serving_the_slot() {
    let map = redis70(M0);
    let owner = |s| map.owner_of(s).map(|n| n.addr.as_str());
    assert_eq!(owner(0), Some("127.0.0.1:21100"));
    // Slot 100 is being migrated: the source still serves it.
    assert_eq!(owner(100), Some("127.0.0.1:21100"));
    assert_eq!(owner(5460), Some("127.0.0.1:21100"));
    assert_eq!(owner(5461), Some("127.0.0.1:21101"));
    assert_eq!(owner(16383), Some("127.0.0.1:21102"));
    assert_eq!(owner(16384), None, "not a slot");
    assert_eq!(ClusterMap::default().owner_of(0), None);
}

#[test]
fn the_hash_tag_lands_on_a_slot_of_this_node() {
    use crate::attribution::keyslot::key_hash_slot;
    for (me, slots) in [(M0, 0..=5460), (M1, 5461..=10922), (M2, 10923..=16383)] {
        let tag = served_hash_tag(&redis70(me)).unwrap();
        let key = format!("__redis-memtrace:{{{tag}}}:calibrate:1:2:b3");
        assert!(
            slots.contains(&key_hash_slot(key.as_bytes())),
            "{me}: {tag}"
        );
    }
    assert_eq!(
        served_hash_tag(&redis70(R0)),
        None,
        "a replica serves no slot"
    );
    // One slot of 16384 is still found.
    let one = map_of(vec![node(M0, 1, None, &[(7777, 7777)])], M0);
    let tag = served_hash_tag(&one).unwrap();
    assert_eq!(key_hash_slot(tag.as_bytes()), 7777);
}

#[test]
fn redis_6_2_has_only_cluster_nodes() {
    const N0: &str = "6cde2c3dda73c0d86b23c53e6cbc6920f671cc00";
    const N1: &str = "91154fa4185c8921e4707d034f4ecff759b80cb9";
    const N2: &str = "bc188d65fc645845a360fae5b74e81caeca1a496";
    const NR: &str = "2ed7b40630500e9f4f7a0856c09ad058a289cc88";
    let want = |me| {
        map_of(
            vec![
                node(N0, 21200, None, &[(0, 5460)]),
                node(N1, 21201, None, &[(5461, 10922)]),
                node(N2, 21202, None, &[(10923, 16383)]),
                node(NR, 21203, Some(N0), &[]),
            ],
            me,
        )
    };
    let nodes = include_str!("fixtures/redis-6.2-nodes-migrating.txt");
    assert_eq!(ClusterMap::from_cluster_nodes(nodes).unwrap(), want(N0));
    let nodes = include_str!("fixtures/redis-6.2-nodes-replica.txt");
    assert_eq!(ClusterMap::from_cluster_nodes(nodes).unwrap(), want(NR));
    // What 6.2 answers to CLUSTER SHARDS is an error, not a map.
    let refused = redis::parse_redis_value(include_bytes!("fixtures/redis-6.2-shards-error.resp"));
    if let Ok(v) = refused {
        let e = ClusterMap::from_cluster_shards(v).unwrap_err();
        assert_eq!(
            e.to_string(),
            "CLUSTER SHARDS reply not understood: not an array of shards"
        );
    }
}

#[test]
fn valkey_9_1_shards_carry_a_shard_id() {
    const V0: &str = "fbd9fd9ad128102a43f3a658d5460c1c6ce0539a";
    const V1: &str = "23dbe8a0a721b8f413a40de49e9484e65422c03a";
    const V2: &str = "81dd8b37ff483b9a173d8d351a1ab359ee6ad752";
    const VR: &str = "4fca54853fc1fcba34d3f1cf7f56abd8041a2f77";
    let want = |me| {
        map_of(
            vec![
                node(V0, 21300, None, &[(0, 5460)]),
                node(V1, 21301, None, &[(5461, 10922)]),
                node(V2, 21302, None, &[(10923, 16383)]),
                node(VR, 21303, Some(V0), &[]),
            ],
            me,
        )
    };
    let mut shards = ClusterMap::from_cluster_shards(resp(include_bytes!(
        "fixtures/valkey-9.1-shards-master.resp"
    )))
    .unwrap();
    shards.mark_myself(V0);
    assert_eq!(shards, want(V0));
    let nodes = include_str!("fixtures/valkey-9.1-nodes-importing.txt");
    assert_eq!(ClusterMap::from_cluster_nodes(nodes).unwrap(), want(V1));
}

#[test]
fn nodes_lines_of_other_shapes() {
    // Redis 3.x (no bus port), a hostname (7.0), Valkey's auxiliary fields, single
    // slots and split ranges, a node in handshake and one without a role.
    let text = "\
aaaa 10.0.0.1:7000 myself,master - 0 0 1 connected 0-10 12 11\n\
bbbb 10.0.0.2:7001@17001,host-b master,fail - 0 0 2 disconnected 100-200 [300->-aaaa]\n\
cccc 10.0.0.3:7002@17002,,tls-port=0,shard-id=ff slave bbbb 0 0 2 connected\n\
dddd 10.0.0.4:7003@17003 handshake - 0 0 0 connected\n\
eeee :0@0 noaddr,noflags - 0 0 0 disconnected\n";
    let map = ClusterMap::from_cluster_nodes(text).unwrap();
    let ids: Vec<&str> = map.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["aaaa", "bbbb", "cccc"]);
    assert_eq!(map.nodes[0].slots, [(0, 12)], "merged: 0-10, 11, 12");
    assert_eq!(map.nodes[1].addr, "10.0.0.2:7001");
    assert_eq!(map.nodes[1].slots, [(100, 200)]);
    assert_eq!(map.nodes[2].addr, "10.0.0.3:7002");
    assert_eq!(map.nodes[2].primary_id.as_deref(), Some("bbbb"));
    assert_eq!(map.myself().map(|n| n.id.as_str()), Some("aaaa"));
}

#[test]
fn malformed_nodes_are_errors_naming_the_line() {
    for (text, why) in [
        ("aaaa 1.2.3.4:1 master", "3 fields, at least 8 expected"),
        (
            "a 1:1 master - 0 0 1 connected 16384",
            "`16384` is not a slot",
        ),
        (
            "a 1:1 master - 0 0 1 connected 9-3",
            "slot range 9-3 is reversed",
        ),
        ("a 1:1 master - 0 0 1 connected x-3", "`x` is not a slot"),
    ] {
        let e = ClusterMap::from_cluster_nodes(text)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "CLUSTER NODES reply not understood: {why} in line `"
            )),
            "{e}"
        );
    }
}

#[test]
fn resp3_maps_read_like_resp2_pairs() {
    use redis::Value::{Array, BulkString, Int, Map};
    let s = |t: &str| BulkString(t.as_bytes().to_vec());
    let node = Map(vec![
        (s("id"), s("abc")),
        (s("ip"), s("::1")),
        (s("tls-port"), Int(6380)),
        (s("role"), s("master")),
    ]);
    let shard = Map(vec![
        (s("slots"), Array(vec![Int(5), Int(9), Int(1), Int(4)])),
        (s("nodes"), Array(vec![node])),
    ]);
    let map = ClusterMap::from_cluster_shards(Array(vec![shard])).unwrap();
    assert_eq!(map.nodes[0].addr, "::1:6380");
    assert_eq!(map.nodes[0].slots, [(1, 9)]);
}

#[test]
fn malformed_shards_are_errors() {
    use redis::Value::{Array, BulkString, Int, Nil};
    let s = |t: &str| BulkString(t.as_bytes().to_vec());
    for (reply, why) in [
        (Nil, "not an array of shards"),
        (Array(vec![Int(1)]), "shard 0: not a map of fields"),
        (
            Array(vec![Array(vec![s("slots"), Array(vec![Int(1)])])]),
            "shard 0: `slots` has an odd number of bounds",
        ),
        (
            Array(vec![Array(vec![
                s("slots"),
                Array(vec![Int(1), Int(99999)]),
            ])]),
            "shard 0: `99999` is not a slot",
        ),
        (
            Array(vec![Array(vec![
                s("nodes"),
                Array(vec![Array(vec![s("role"), s("master")])]),
            ])]),
            "shard 0: a node has no id",
        ),
        (
            Array(vec![Array(vec![
                s("nodes"),
                Array(vec![Array(vec![s("id"), s("x"), s("role"), s("boss")])]),
            ])]),
            "shard 0: node x has role Some(\"boss\")",
        ),
    ] {
        let e = ClusterMap::from_cluster_shards(reply)
            .unwrap_err()
            .to_string();
        assert_eq!(e, format!("CLUSTER SHARDS reply not understood: {why}"));
    }
}

#[test]
fn the_map_serializes_as_the_timeline_documents_it() {
    let v = serde_json::to_value(ClusterCapture {
        ts_ns: 7,
        map: redis70(M0),
    })
    .unwrap();
    assert_eq!(v["ts_ns"], 7);
    assert_eq!(
        v["map"]["nodes"][2],
        serde_json::json!({"id": M0, "addr": "127.0.0.1:21100", "role": "master",
                           "primary_id": null, "slots": [[0, 5460]], "myself": true})
    );
    let back: ClusterCapture = serde_json::from_value(v).unwrap();
    assert_eq!(back.map, redis70(M0));
}

#[test]
fn captures_keep_changes_only_the_first_and_the_latest() {
    let map = |slot| map_of(vec![node(M0, 1, None, &[(slot, slot)])], M0);
    let mut c = Captures::new(3);
    assert_eq!(c.observe(1, map(0)), None);
    assert_eq!(c.observe(2, map(0)), None, "unchanged: not kept");
    assert_eq!(c.observe(3, map(1)), None);
    assert_eq!(c.observe(4, map(2)), None);
    let w = c.observe(5, map(3)).expect("a warning at the first drop");
    assert!(
        w.starts_with("the cluster map changed more than 3 times"),
        "{w}"
    );
    assert_eq!(c.observe(6, map(4)), None, "warned once");
    let ts: Vec<u64> = c.list().iter().map(|c| c.ts_ns).collect();
    assert_eq!(ts, [1, 5, 6]);
    assert_eq!(c.dropped, 2);
    // serve: only the latest, silently.
    let mut live = Captures::new(1);
    for (ts, slot) in [(1, 0), (2, 1), (3, 2)] {
        assert_eq!(live.observe(ts, map(slot)), None);
    }
    assert_eq!(live.list().len(), 1);
    assert_eq!(live.list()[0].map, map(2));
}

/// Any RESP value, nested a few levels.
fn any_value() -> impl Strategy<Value = redis::Value> {
    let leaf = prop_oneof![
        Just(redis::Value::Nil),
        any::<i64>().prop_map(redis::Value::Int),
        (-5i64..17000).prop_map(redis::Value::Int),
        prop::sample::select(vec![
            "slots", "nodes", "id", "ip", "port", "role", "master", "replica", "tls-port"
        ])
        .prop_map(|s| redis::Value::BulkString(s.as_bytes().to_vec())),
        any::<Vec<u8>>().prop_map(redis::Value::BulkString),
        "\\PC*".prop_map(redis::Value::SimpleString),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(redis::Value::Array),
            prop::collection::vec((inner.clone(), inner), 0..6).prop_map(redis::Value::Map),
        ]
    })
}

proptest! {
    #[test]
    fn nodes_parser_never_panics(text in "\\PC*") {
        let _ = ClusterMap::from_cluster_nodes(&text);
    }

    #[test]
    fn nodes_parser_never_panics_on_node_like_lines(
        lines in prop::collection::vec(
            "[a-f0-9]{1,4} [0-9.:@,]{0,12} (myself,)?(master|slave|handshake|noaddr)(,fail)? [-a-f0-9]{1,3} [0-9] [0-9] [0-9] connected( \\[?[0-9]{1,5}(-[<>]?-?[0-9a-f]{0,5})?\\]?){0,4}",
            0..8,
        )
    ) {
        if let Ok(map) = ClusterMap::from_cluster_nodes(&lines.join("\n")) {
            for s in [0u16, 100, 16383] {
                let _ = map.owner_of(s);
            }
        }
    }

    #[test]
    fn shards_parser_never_panics(v in any_value()) {
        if let Ok(mut map) = ClusterMap::from_cluster_shards(v) {
            map.mark_myself("x");
            let _ = map.owner_of(0);
        }
    }

    #[test]
    fn shards_parser_never_panics_on_any_bytes(bytes in any::<Vec<u8>>()) {
        if let Ok(v) = redis::parse_redis_value(&bytes) {
            let _ = ClusterMap::from_cluster_shards(v);
        }
    }
}

/// The query against real clusters: 7.0 answers CLUSTER SHARDS, 6.2 only CLUSTER NODES,
/// a server without cluster mode gives no map.
#[test]
fn query_reads_real_servers() {
    for label in ["redis-7.0", "redis-6.2"] {
        let cluster = testkit::cluster::Cluster::start(&testkit::by_label(label), 3);
        for (i, server) in cluster.nodes().iter().enumerate() {
            let mut conn =
                crate::redis::info::connect(&server.url(), std::time::Duration::from_secs(2))
                    .unwrap();
            let map = query(&mut conn).unwrap().expect("a cluster map");
            assert_eq!(map.counts(), (3, 0), "{label}");
            assert_eq!(
                map.myself().map(|n| n.addr.clone()),
                Some(server.url()),
                "{label}"
            );
            for slot in [0u16, 5461, 16383] {
                let owner = map.owner_of(slot).map(|n| n.addr.clone());
                let want = format!("127.0.0.1:{}", cluster.owner_of_slot(slot));
                assert_eq!(owner, Some(want), "{label} node {i} slot {slot}");
            }
        }
        // Refused once by 6.2, then never asked again on that connection.
        let server = &cluster.nodes()[0];
        // One connection for the statistics: the crate's handshake on a new one (CLIENT
        // SETINFO) is refused by servers before 7.2 and counts as errors too.
        let mut stats = server.client();
        let mut errors = || {
            testkit::commands::info_on(&mut stats, "errorstats")
                .get("errorstat_ERR")
                .cloned()
        };
        let before = errors();
        let mut conn =
            crate::redis::info::connect(&server.url(), std::time::Duration::from_secs(2)).unwrap();
        let mut q = ClusterQuery::default();
        for _ in 0..3 {
            q.read(&mut conn).unwrap();
        }
        let refused = |e: Option<String>| {
            e.map_or(0, |e| {
                e.trim_start_matches("count=").parse::<u64>().unwrap()
            })
        };
        assert_eq!(
            refused(errors()) - refused(before),
            u64::from(label == "redis-6.2"),
            "{label}"
        );
    }
    let plain = testkit::Server::start(&testkit::by_label("redis-7.0"), &[]);
    let mut conn =
        crate::redis::info::connect(&plain.url(), std::time::Duration::from_secs(2)).unwrap();
    assert_eq!(query(&mut conn).unwrap(), None);
}

// matrix-js-sdk's SlidingSync (simplified sliding sync, MSC4186) syncing a room list and a
// timeline, for tests/test_sliding_sync_js.py.
//
//   node sliding_sync.mjs BASE_URL USER PASSWORD ROOM_ID LIVE_COUNT [TIMEOUT_SECONDS]
//
// Logs in with a password and starts the client with a SlidingSync of one list, "all_rooms"
// (range 0-19, timeline_limit 1, Element X's required state), and room subscriptions with
// timeline_limit 20. Once the room list has come (the first response processed), subscribes
// to ROOM_ID and, when that room's timeline holds what the subscription sent, prints one JSON
// line {"ready": ...} with the room list it sees; then waits for LIVE_COUNT messages whose body
// starts with "live " to reach ROOM_ID's live timeline (the test sends them) and prints a
// second line {"done": ...}: every message body of the room's live timeline, in order, and
// the number of timeline events per event ID. On an error: {"error": ...}, exit status 1. The
// SDK's logging goes to stderr.

console.log = console.info = console.debug = (...args) => console.error(...args);

const sdk = await import("matrix-js-sdk");
const { SlidingSync, SlidingSyncState } = await import("matrix-js-sdk/lib/sliding-sync.js");

function fail(error) {
    process.stdout.write(JSON.stringify({ error: String(error?.stack ?? error) }) + "\n");
    process.exit(1);
}

const [baseUrl, user, password, roomId, liveArg, timeoutArg] = process.argv.slice(2);
if (!baseUrl || !user || !password || !roomId || !liveArg) {
    fail("usage: node sliding_sync.mjs BASE_URL USER PASSWORD ROOM_ID LIVE_COUNT [TIMEOUT]");
}
const liveCount = Number(liveArg);
setTimeout(() => fail(`timed out after ${timeoutArg ?? 60} s`),
           Number(timeoutArg ?? 60) * 1000).unref();
process.on("unhandledRejection", fail);

const REQUIRED_STATE = [
    ["m.room.name", ""], ["m.room.encryption", ""], ["m.room.member", "$LAZY"],
    ["m.room.member", "$ME"], ["m.room.topic", ""], ["m.room.avatar", ""],
    ["m.room.canonical_alias", ""], ["m.room.power_levels", ""], ["m.room.join_rules", ""],
    ["m.room.create", ""], ["m.room.history_visibility", ""],
];

function timeline(room) {
    return room.getLiveTimeline().getEvents();
}

function until(slidingSync, check) {
    // Resolves once check() holds, checked after every sliding sync response is processed.
    return new Promise((resolve) => {
        const poll = () => {
            if (check()) {
                slidingSync.off(sdk.SlidingSyncEvent.Lifecycle, onLifecycle);
                resolve();
            }
        };
        const onLifecycle = (state) => {
            if (state === SlidingSyncState.Complete) setImmediate(poll);
        };
        slidingSync.on(sdk.SlidingSyncEvent.Lifecycle, onLifecycle);
        poll();
    });
}

async function main() {
    const login = await sdk.createClient({ baseUrl }).loginRequest({
        type: "m.login.password", identifier: { type: "m.id.user", user }, password,
    });
    const client = sdk.createClient({
        baseUrl, userId: login.user_id, deviceId: login.device_id,
        accessToken: login.access_token,
    });
    const lists = new Map([["all_rooms", {
        ranges: [[0, 19]], timeline_limit: 1, required_state: REQUIRED_STATE,
    }]]);
    const slidingSync = new SlidingSync(
        baseUrl, lists, { timeline_limit: 20, required_state: REQUIRED_STATE }, client, 10000);
    let responses = 0;
    slidingSync.on(sdk.SlidingSyncEvent.Lifecycle, (state, resp, err) => {
        if (state === SlidingSyncState.Complete) responses += 1;
        if (err) console.error("sliding sync error", err);
    });
    await client.startClient({ slidingSync });

    await until(slidingSync, () => responses > 0 && client.getRoom(roomId) !== null);
    const listed = slidingSync.getListData("all_rooms");
    const rooms = client.getRooms().map((r) => ({
        room_id: r.roomId, name: r.name, bump_stamp: r.getBumpStamp?.() ?? null,
        timeline: timeline(r).length,
    }));

    slidingSync.modifyRoomSubscriptions(new Set([roomId]));
    const room = client.getRoom(roomId);
    await until(slidingSync, () => timeline(room).length >= 20);
    const opened = timeline(room).map((e) => e.getContent().body ?? null);
    process.stdout.write(JSON.stringify({
        ready: { count: listed?.joinedCount ?? null, rooms, opened },
    }) + "\n");

    const bodies = () => timeline(room).map((e) => e.getContent().body)
        .filter((b) => typeof b === "string" && b.startsWith("live "));
    await until(slidingSync, () => bodies().length >= liveCount);
    const ids = {};
    for (const event of timeline(room)) ids[event.getId()] = (ids[event.getId()] ?? 0) + 1;
    process.stdout.write(JSON.stringify({
        done: { live: bodies(), event_counts: ids, responses },
    }) + "\n");
    client.stopClient();
    process.exit(0);
}

main().catch(fail);

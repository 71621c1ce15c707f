// A matrix-js-sdk client with its Rust crypto, for tests/test_e2e_js.py.
//
//   node e2e_client.mjs BASE_URL USER PASSWORD [TIMEOUT_SECONDS]
//
// Logs in with the password, starts the Rust crypto in memory (no IndexedDB) and syncs, joins
// every room it is invited to, and reports on stdout, one JSON object a line:
//   {"event": "ready", "user_id", "device_id"}    once /keys/query on the server shows its device
//   {"event": "joined", "room_id"}
//   {"event": "decrypted", "room_id", "sender", "event_id", "body"}    per m.room.encrypted event
//   {"event": "sent", "room_id", "event_id"}      answering a "send" command
//   {"event": "error", "message"}                 then it exits with status 1
// It reads commands on stdin, one JSON object a line:
//   {"cmd": "send", "room_id", "body"}    sends an m.text message (encrypted in an encrypted room)
//   {"cmd": "stop"}                       stops the client and exits with status 0
// It gives up by itself after TIMEOUT_SECONDS (default 60). The SDK's own (debug) logging and
// the Rust crypto's go to stderr.

import { createInterface } from "node:readline";

// Everything the SDK (and the crypto's wasm) logs goes to stderr: stdout is for our JSON lines.
console.log = console.info = console.debug = (...args) => console.error(...args);

const sdk = await import("matrix-js-sdk");
const { ClientEvent, KnownMembership, MatrixEventEvent, Method, RoomEvent, SyncState } = sdk;

function emit(event, fields = {}) {
    process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

function fail(error) {
    emit("error", { message: String(error?.stack ?? error) });
    process.exit(1);
}

const [baseUrl, user, password, timeoutArg] = process.argv.slice(2);
if (!baseUrl || !user || !password) {
    fail("usage: node e2e_client.mjs BASE_URL USER PASSWORD [TIMEOUT_SECONDS]");
}
setTimeout(() => fail(`timed out after ${timeoutArg ?? 60} s`),
           Number(timeoutArg ?? 60) * 1000).unref();
process.on("unhandledRejection", fail);
process.on("uncaughtException", fail);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
    const login = await sdk.createClient({ baseUrl }).loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user },
        password,
        initial_device_display_name: `${user}'s matrix-js-sdk`,
    });
    const client = sdk.createClient({
        baseUrl,
        userId: login.user_id,
        deviceId: login.device_id,
        accessToken: login.access_token,
    });
    await client.initRustCrypto({ useIndexedDB: false });

    client.on(RoomEvent.MyMembership, (room, membership) => {
        if (membership === KnownMembership.Invite) {
            client.joinRoom(room.roomId).then(() => emit("joined", { room_id: room.roomId }), fail);
        }
    });
    // Fired for every event the crypto tried to decrypt, again when a late key arrives.
    client.on(MatrixEventEvent.Decrypted, (event) => {
        if (event.isDecryptionFailure()) {
            console.error(`cannot decrypt ${event.getId()} yet: ${event.decryptionFailureReason}`);
            return;
        }
        emit("decrypted", {
            room_id: event.getRoomId(),
            sender: event.getSender(),
            event_id: event.getId(),
            body: event.getContent().body,
        });
    });

    const prepared = new Promise((resolve, reject) => {
        client.on(ClientEvent.Sync, (state, _prev, data) => {
            if (state === SyncState.Prepared) resolve();
            if (state === SyncState.Error) reject(data?.error ?? new Error("sync failed"));
        });
    });
    await client.startClient({ initialSyncLimit: 20 });
    await prepared;

    // The crypto uploads its device and one-time keys in the background: ready once the server
    // hands them out.
    for (;;) {
        const keys = await client.http.authedRequest(Method.Post, "/keys/query", undefined,
                                                     { device_keys: { [login.user_id]: [] } });
        if (keys.device_keys?.[login.user_id]?.[login.device_id]) break;
        await sleep(100);
    }
    emit("ready", { user_id: login.user_id, device_id: login.device_id });

    for await (const line of createInterface({ input: process.stdin })) {
        if (!line.trim()) continue;
        const command = JSON.parse(line);
        if (command.cmd === "send") {
            const { event_id } = await client.sendTextMessage(command.room_id, command.body);
            emit("sent", { room_id: command.room_id, event_id });
        } else if (command.cmd === "stop") {
            break;
        } else {
            throw new Error(`unknown command ${line}`);
        }
    }
    client.stopClient();
    process.exit(0);
}

main().catch(fail);

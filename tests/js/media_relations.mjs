// matrix-js-sdk as a chat app uses media and relations, for tests/test_media_relations_js.py.
//
//   node media_relations.mjs BASE_URL USER PASSWORD ROOM_ID [TIMEOUT_SECONDS]
//
// Logs in, uploads a PNG (uploadContent) and sends it as m.image into ROOM_ID (joined
// already), downloads it back through the authenticated media API (the URL the SDK builds with
// useAuthentication), reacts to it, sends a message and edits it, replies in a thread to the
// picture; then reads the picture's relations (relations()) and the thread root and the
// edited message as the server bundles them (fetchRoomEvent). Prints one JSON object on
// stdout with what it saw; on an error, {"error": ...} and exit status 1. The SDK's logging goes
// to stderr.

console.log = console.info = console.debug = (...args) => console.error(...args);

const sdk = await import("matrix-js-sdk");

function fail(error) {
    process.stdout.write(JSON.stringify({ error: String(error?.stack ?? error) }) + "\n");
    process.exit(1);
}

const [baseUrl, user, password, roomId, timeoutArg] = process.argv.slice(2);
if (!baseUrl || !user || !password || !roomId) {
    fail("usage: node media_relations.mjs BASE_URL USER PASSWORD ROOM_ID [TIMEOUT_SECONDS]");
}
setTimeout(() => fail(`timed out after ${timeoutArg ?? 60} s`),
           Number(timeoutArg ?? 60) * 1000).unref();
process.on("unhandledRejection", fail);

// A 2x2 red PNG.
const PNG = Buffer.from(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAEklEQVR4nGP4z8DAwMDAxMDAAAAsTAMB" +
    "ZoRZ0wAAAABJRU5ErkJggg==", "base64");

async function main() {
    const login = await sdk.createClient({ baseUrl }).loginRequest({
        type: "m.login.password", identifier: { type: "m.id.user", user }, password,
    });
    const client = sdk.createClient({
        baseUrl, userId: login.user_id, deviceId: login.device_id,
        accessToken: login.access_token,
    });

    const uploaded = await client.uploadContent(PNG, { name: "red.png", type: "image/png" });
    const mxc = uploaded.content_uri;
    const picture = (await client.sendEvent(roomId, "m.room.message", {
        msgtype: "m.image", body: "red.png", url: mxc,
        info: { mimetype: "image/png", size: PNG.length, w: 2, h: 2 },
    })).event_id;
    // The download URL as the SDK builds it for authenticated media.
    const url = client.mxcUrlToHttp(mxc, undefined, undefined, undefined, false, true, true);
    const response = await fetch(url, {
        headers: { Authorization: `Bearer ${login.access_token}` } });
    const downloaded = Buffer.from(await response.arrayBuffer());

    await client.sendEvent(roomId, "m.reaction", {
        "m.relates_to": { rel_type: "m.annotation", event_id: picture, key: "👍" } });
    const message = (await client.sendMessage(roomId, { msgtype: "m.text", body: "nice red" }))
        .event_id;
    const edit = (await client.sendMessage(roomId, {
        msgtype: "m.text", body: "* very nice red",
        "m.new_content": { msgtype: "m.text", body: "very nice red" },
        "m.relates_to": { rel_type: "m.replace", event_id: message },
    })).event_id;
    const reply = (await client.sendMessage(roomId, {
        msgtype: "m.text", body: "where is it from?",
        "m.relates_to": { rel_type: "m.thread", event_id: picture, is_falling_back: true,
                          "m.in_reply_to": { event_id: picture } },
    })).event_id;

    const related = await client.relations(roomId, picture, null, null);
    const root = await client.fetchRoomEvent(roomId, picture);
    const edited = await client.fetchRoomEvent(roomId, message);
    process.stdout.write(JSON.stringify({
        mxc, picture, message, edit, reply,
        download: { status: response.status, type: response.headers.get("content-type"),
                    same: downloaded.equals(PNG) },
        relations: related.events.map((e) => ({ type: e.getType(), id: e.getId() })),
        root_relations: root.unsigned?.["m.relations"] ?? null,
        edited_relations: edited.unsigned?.["m.relations"] ?? null,
    }) + "\n");
    process.exit(0);
}

main().catch(fail);

<?php

/**
 * Lockstep for PHP: read data that every web server of the farm switches to at the same instant.
 *
 * The arginfo header, lockstep_arginfo.h, is generated from this file by php-src's
 * build/gen_stub.php: run bindings/php/gen_arginfo.sh after changing it.
 *
 * @generate-class-entries
 */

namespace Lockstep {

    /**
     * A handle on the data server. Handles are per process and opened on first use; clients
     * made with the same options in one process share one handle (its retrieval thread and
     * its versions). Reads never touch the network.
     *
     * @strict-properties
     * @not-serializable
     */
    final class Client
    {
        /**
         * $options overrides the ini settings:
         *   "url" (one data server, or several separated by ","), "token" (read token),
         *   "name" (this process in `lockstep status`; the pid is appended),
         *   "bootstrap_wait_ms" (milliseconds to wait for data when the handle opens),
         *   "allow_not_ready" (open before data arrived; reads then throw until it does),
         *   "cache_dir" (the host cache directory; "" turns it off).
         * @throws \ValueError for an unknown option or a value with ";" or a newline.
         * @throws Exception when the handle cannot open (the library's message and code).
         */
        public function __construct(array $options = []) {}

        /**
         * The value of $key in the version active now, or $default, unchanged (any type),
         * when it is not there.
         * @throws Exception before any data has arrived (allow_not_ready).
         */
        public function get(string $key, mixed $default = null): mixed {}

        /** The version reads see now; 0 before the first one arrives. */
        public function activeVersion(): int {}

        /** The version armed for the next activation; 0 when none is. */
        public function stagedVersion(): int {}

        /**
         * Counters and gauges: times ending in _us are µs since the Unix epoch on the data
         * server's clock (0: never), clock_offset_us and clock_error_us are µs.
         * @return array<string, int|bool>
         */
        public function stats(): array {}

        /** Pins the active version for the rest of the request. */
        public function snapshot(): Snapshot {}
    }

    /**
     * One pinned version: every read through it comes from that version.
     *
     * @strict-properties
     * @not-serializable
     */
    final class Snapshot
    {
        /** Snapshots are made by Client::snapshot(). */
        private function __construct() {}

        /** The value of $key in this version, or $default, unchanged (any type). */
        public function get(string $key, mixed $default = null): mixed {}

        public function version(): int {}
    }

    /** A failure from liblockstep; getCode() is its status code. */
    class Exception extends \RuntimeException
    {
    }

    /** The data server refused the read token (HTTP 401 or 403); getCode() is 10. */
    class UnauthorizedException extends Exception
    {
    }

    /** The data server could not be reached, or sent nothing usable, in time; getCode() is 7. */
    class UnreachableException extends Exception
    {
    }

    /** No version has arrived from the data server yet (allow_not_ready); getCode() is 2. */
    class NotReadyException extends Exception
    {
    }
}

/* deadletters.c — see deadletters.h. */
#include "deadletters.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "luahost.h"

static int usage(void)
{
    fprintf(stderr, "usage: ember dead-letters [--config FILE] [--conf key=value]... JOB "
                    "[--json | --replay-to FILE]\n");
    return 2;
}

/* checkpoint.dir as `ember run` would see it: ember.conf (or --config),
 * then --conf flags. */
static int load_config(em_config *cfg, const char *file, int argc, char **argv, char *err,
                       size_t errlen)
{
    if (!file && access("ember.conf", R_OK) == 0)
        file = "ember.conf";
    if (file && em_config_load_file(cfg, file, err, errlen) != 0)
        return -1;
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--conf") == 0 && i + 1 < argc &&
            em_config_set(cfg, argv[++i], err, errlen) != 0)
            return -1;
    return em_config_finish(cfg, err, errlen);
}

int em_dead_letters_main(int argc, char **argv)
{
    const char *file = NULL, *job = NULL, *mode = "list", *target = "";
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            file = argv[++i];
        else if (strcmp(argv[i], "--conf") == 0 && i + 1 < argc)
            i++;
        else if (strcmp(argv[i], "--json") == 0)
            mode = "json";
        else if (strcmp(argv[i], "--replay-to") == 0 && i + 1 < argc)
            mode = "replay", target = argv[++i];
        else if (argv[i][0] == '-' || job)
            return usage();
        else
            job = argv[i];
    }
    if (!job)
        return usage();
    em_config cfg;
    em_config_init(&cfg);
    char err[2048];
    if (load_config(&cfg, file, argc, argv, err, sizeof err) != 0) {
        fprintf(stderr, "ember: %s\n", err);
        em_config_free(&cfg);
        return 2;
    }
    lua_State *L = luaL_newstate();
    int rc = 1;
    if (L) {
        luaL_openlibs(L);
        lua_getglobal(L, "package");
        lua_pushfstring(L, "%s/?.lua;%s/?/init.lua", em_luahost_lua_dir(), em_luahost_lua_dir());
        lua_setfield(L, -2, "path");
        lua_pop(L, 1);
        lua_getglobal(L, "require");
        lua_pushstring(L, "ember.dead_letters");
        if (lua_pcall(L, 1, 1, 0) == 0) {
            lua_getfield(L, -1, "main");
            lua_pushstring(L, cfg.checkpoint_dir);
            lua_pushstring(L, job);
            lua_pushstring(L, mode);
            lua_pushstring(L, target);
            if (lua_pcall(L, 4, 1, 0) == 0)
                rc = (int)lua_tointeger(L, -1);
        }
        if (lua_isstring(L, -1) && !lua_isnumber(L, -1))
            fprintf(stderr, "ember dead-letters: %s\n", lua_tostring(L, -1));
        lua_close(L);
    }
    em_config_free(&cfg);
    return rc;
}
